//! URL globbing as curl does it by default (-g turns it off): `{a,b}` alternatives and
//! `[1-10]`, `[01-10]`, `[a-z]`, `[1-9:2]` ranges, expanded rightmost fastest; `#N` in
//! an -o name stands for the Nth glob's current value.
use super::{CurlError, EXIT_BAD_URL, fail};

#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Text(String),
    Set(Vec<String>),
}

fn bad(pos: usize, what: &str) -> CurlError {
    fail(EXIT_BAD_URL, format!("{what} in URL position {}", pos + 1))
}

/// A `[...]` range's values.
fn range(body: &str, pos: usize) -> Result<Vec<String>, CurlError> {
    let (span, step) = match body.split_once(':') {
        Some((span, step)) => (
            span,
            step.parse::<u64>()
                .ok()
                .filter(|s| *s > 0)
                .ok_or_else(|| bad(pos, "bad range"))?,
        ),
        None => (body, 1),
    };
    let (from, to) = span.split_once('-').ok_or_else(|| bad(pos, "bad range"))?;
    let letters = |s: &str| {
        let mut c = s.chars();
        match (c.next(), c.next()) {
            (Some(ch), None) if ch.is_ascii_alphabetic() => Some(ch),
            _ => None,
        }
    };
    if let (Some(a), Some(b)) = (letters(from), letters(to)) {
        if a > b || a.is_ascii_lowercase() != b.is_ascii_lowercase() {
            return Err(bad(pos, "bad range"));
        }
        return Ok((a..=b)
            .step_by(step as usize)
            .map(|c| c.to_string())
            .collect());
    }
    let (a, b) = (
        from.parse::<u64>().map_err(|_| bad(pos, "bad range"))?,
        to.parse::<u64>().map_err(|_| bad(pos, "bad range"))?,
    );
    if a > b || b - a > 10_000_000 {
        return Err(bad(pos, "bad range"));
    }
    // A leading zero pads every value to the width of the first.
    let width = if from.starts_with('0') && from.len() > 1 {
        from.len()
    } else {
        0
    };
    Ok((a..=b)
        .step_by(step as usize)
        .map(|n| format!("{n:0width$}"))
        .collect())
}

fn parse(url: &str) -> Result<Vec<Piece>, CurlError> {
    let mut pieces = Vec::new();
    let mut text = String::new();
    let mut chars = url.char_indices().peekable();
    while let Some((pos, c)) = chars.next() {
        match c {
            '\\' if matches!(chars.peek(), Some((_, '[' | ']' | '{' | '}'))) => {
                text.push(chars.next().map_or(c, |(_, n)| n));
            }
            '{' | '[' => {
                let close = if c == '{' { '}' } else { ']' };
                let rest = &url[pos + 1..];
                let end = rest.find(close).ok_or_else(|| {
                    bad(
                        pos,
                        if c == '{' {
                            "unmatched brace"
                        } else {
                            "unmatched bracket"
                        },
                    )
                })?;
                let body = &rest[..end];
                // An IPv6 address in brackets is not a range.
                if c == '[' && body.contains(':') && !body.contains('-') {
                    text.push(c);
                    continue;
                }
                let values = if c == '{' {
                    body.split(',').map(str::to_string).collect()
                } else {
                    range(body, pos)?
                };
                if !text.is_empty() {
                    pieces.push(Piece::Text(std::mem::take(&mut text)));
                }
                pieces.push(Piece::Set(values));
                for _ in 0..=body.chars().count() {
                    chars.next();
                }
            }
            _ => text.push(c),
        }
    }
    if !text.is_empty() {
        pieces.push(Piece::Text(text));
    }
    Ok(pieces)
}

/// One URL of the expansion, with each glob's value in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expanded {
    pub url: String,
    pub values: Vec<String>,
}

/// Every URL a globbed URL stands for, rightmost glob fastest.
pub fn expand(url: &str) -> Result<Vec<Expanded>, CurlError> {
    let pieces = parse(url)?;
    let mut out = vec![Expanded {
        url: String::new(),
        values: Vec::new(),
    }];
    for piece in pieces {
        out = match piece {
            Piece::Text(t) => out
                .into_iter()
                .map(|mut e| {
                    e.url.push_str(&t);
                    e
                })
                .collect(),
            Piece::Set(values) => out
                .into_iter()
                .flat_map(|e| {
                    values.iter().map(move |v| {
                        let mut next = e.clone();
                        next.url.push_str(v);
                        next.values.push(v.clone());
                        next
                    })
                })
                .collect(),
        };
    }
    Ok(out)
}

/// An -o name with #N replaced by the Nth glob's value.
pub fn output_name(template: &str, values: &[String]) -> String {
    let mut out = String::new();
    let mut chars = template.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '#' && chars.peek().is_some_and(char::is_ascii_digit) {
            let mut n = 0usize;
            while let Some(d) = chars.peek().and_then(|d| d.to_digit(10)) {
                n = n * 10 + d as usize;
                chars.next();
            }
            match values.get(n.wrapping_sub(1)) {
                Some(v) => out.push_str(v),
                None => out.push_str(&format!("#{n}")),
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn urls(u: &str) -> Vec<String> {
        expand(u).unwrap().into_iter().map(|e| e.url).collect()
    }

    #[test]
    fn sets_and_ranges_expand_rightmost_fastest() {
        assert_eq!(
            urls("http://h/{a,b}[1-2]"),
            ["http://h/a1", "http://h/a2", "http://h/b1", "http://h/b2"]
        );
        assert_eq!(urls("h/[08-10]"), ["h/08", "h/09", "h/10"]);
        assert_eq!(urls("h/[a-e:2]"), ["h/a", "h/c", "h/e"]);
        assert_eq!(urls("h/\\[x\\]"), ["h/[x]"]);
        assert_eq!(urls("http://[::1]/"), ["http://[::1]/"]);
        assert_eq!(urls("plain"), ["plain"]);
        assert_eq!(expand("h/[1-").unwrap_err().code, EXIT_BAD_URL);
        assert_eq!(expand("h/[3-1]").unwrap_err().code, EXIT_BAD_URL);
        assert_eq!(expand("h/{a,b").unwrap_err().code, EXIT_BAD_URL);
    }

    #[test]
    fn output_names_take_the_values() {
        let e = expand("h/{x,y}/[1-2]").unwrap();
        assert_eq!(output_name("f_#1_#2.txt", &e[3].values), "f_y_2.txt");
        assert_eq!(output_name("f#3", &e[0].values), "f#3");
        assert_eq!(output_name("plain", &e[0].values), "plain");
    }
}
