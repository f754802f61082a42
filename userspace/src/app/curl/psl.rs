//! The public suffix list (publicsuffix.org), as curl's libpsl uses it for cookies: a
//! cookie may not be set for a public suffix ("com", "co.uk", "github.io") by a host
//! under it (RFC 6265 5.3 step 5). The list is the system's (Debian's `publicsuffix`
//! package, which libpsl reads too); without it only single labels count, as curl
//! built without libpsl does.
use std::collections::HashSet;
use std::sync::OnceLock;

/// Where Debian keeps the list.
pub const SYSTEM_LIST: &str = "/usr/share/publicsuffix/public_suffix_list.dat";

#[derive(Debug, Default)]
pub struct SuffixList {
    /// "com", "co.uk"; a wildcard "*.ck" is kept as "*.ck".
    rules: HashSet<String>,
    /// "!www.ck": names that a wildcard would make suffixes, and are not.
    exceptions: HashSet<String>,
}

impl SuffixList {
    /// Parses the list's text: one rule a line, `//` comments, IDN rules made ASCII.
    pub fn parse(text: &str) -> SuffixList {
        let mut list = SuffixList::default();
        for line in text.lines() {
            let rule = line.split_whitespace().next().unwrap_or_default();
            if rule.is_empty() || rule.starts_with("//") {
                continue;
            }
            let (exception, rule) = match rule.strip_prefix('!') {
                Some(r) => (true, r),
                None => (false, rule),
            };
            let ascii = if rule.is_ascii() {
                rule.to_ascii_lowercase()
            } else {
                let (wild, name) = match rule.strip_prefix("*.") {
                    Some(n) => ("*.", n),
                    None => ("", rule),
                };
                format!("{wild}{}", url::quirks::domain_to_ascii(name))
            };
            if exception {
                list.exceptions.insert(ascii);
            } else {
                list.rules.insert(ascii);
            }
        }
        list
    }

    /// The system's list, read once; None where it is not installed.
    pub fn system() -> Option<&'static SuffixList> {
        static LIST: OnceLock<Option<SuffixList>> = OnceLock::new();
        LIST.get_or_init(|| {
            std::fs::read_to_string(SYSTEM_LIST)
                .ok()
                .map(|t| SuffixList::parse(&t))
        })
        .as_ref()
    }

    /// True when `domain` (lower case, ASCII) is a public suffix: a rule names it, or a
    /// wildcard names its parent and no exception names it, or it is one label (the
    /// list's implicit "*" rule).
    pub fn is_public_suffix(&self, domain: &str) -> bool {
        let domain = domain.trim_end_matches('.');
        if self.exceptions.contains(domain) {
            return false;
        }
        if self.rules.contains(domain) {
            return true;
        }
        match domain.split_once('.') {
            None => true,
            Some((_, parent)) => self.rules.contains(&format!("*.{parent}")),
        }
    }
}

/// True when `domain` is a public suffix by the system's list, or, without one, a
/// single label other than localhost (curl without libpsl).
pub fn is_public_suffix(domain: &str) -> bool {
    match SuffixList::system() {
        Some(list) => list.is_public_suffix(domain),
        None => !domain.contains('.') && domain != "localhost",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_wildcards_exceptions_and_the_implicit_star() {
        let list = SuffixList::parse(
            "// comment\ncom\nco.uk\n*.ck\n!www.ck\ngithub.io\n\u{5546}\u{6807}\n",
        );
        for suffix in [
            "com",
            "co.uk",
            "anything.ck",
            "github.io",
            "org",
            "xn--czr694b",
        ] {
            assert!(list.is_public_suffix(suffix), "{suffix}");
        }
        for name in [
            "example.com",
            "a.co.uk",
            "www.ck",
            "a.b.ck",
            "me.github.io",
            "uk",
        ] {
            assert_eq!(list.is_public_suffix(name), name == "uk", "{name}");
        }
    }
}
