//! What curl prints for a command line it cannot take: two lines, the first naming the
//! option and what is wrong with it, the second pointing at the help, and exit code 2
//! (clap's own block of several lines is not what scripts that grep curl expect).
use super::CurlArgs;
use clap::error::{ContextKind, ContextValue, ErrorKind};

pub const TRY_HELP: &str = "curl: try 'curl --help' or 'curl --manual' for more information";

/// True when `argv` (program name first) runs the curl subcommand: the first word
/// that is no option (nor `--log`'s value) is `curl`.
pub fn is_curl_command_line(argv: &[String]) -> bool {
    let mut words = argv.iter().skip(1);
    while let Some(word) = words.next() {
        if word == "--log" {
            words.next();
        } else if !word.starts_with('-') {
            return word == "curl";
        }
    }
    false
}

/// The option as the user wrote it: the last word of the command line that is its
/// short or long form (clap names the long one).
fn as_written(clap_name: &str, argv: &[String]) -> String {
    let long = clap_name.split_whitespace().next().unwrap_or(clap_name);
    let short = <CurlArgs as clap::Args>::augment_args(clap::Command::new("curl"))
        .get_arguments()
        .find(|a| a.get_long().is_some_and(|l| format!("--{l}") == long))
        .and_then(|a| a.get_short());
    argv.iter()
        .rev()
        .find_map(|w| {
            if w == long || w.starts_with(&format!("{long}=")) {
                return Some(long.to_string());
            }
            let s = short?;
            // -o, or -so: a cluster whose last letter takes the value.
            (w.starts_with('-') && !w.starts_with("--") && w.ends_with(s)).then(|| format!("-{s}"))
        })
        .unwrap_or_else(|| long.to_string())
}

/// curl's first line for a clap error; None for --help and --version (clap prints
/// those as they are).
pub fn message(e: &clap::Error, argv: &[String]) -> Option<String> {
    let arg = match e.get(ContextKind::InvalidArg) {
        Some(ContextValue::String(s)) => s.clone(),
        _ => String::new(),
    };
    let option = |what: &str| format!("curl: option {}: {what}", as_written(&arg, argv));
    Some(match e.kind() {
        ErrorKind::DisplayHelp
        | ErrorKind::DisplayVersion
        | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => return None,
        ErrorKind::UnknownArgument => format!("curl: option {arg}: is unknown"),
        ErrorKind::InvalidValue
            if e.get(ContextKind::InvalidValue)
                .is_some_and(|v| matches!(v, ContextValue::String(s) if s.is_empty())) =>
        {
            option("requires parameter")
        }
        ErrorKind::ValueValidation => {
            let why = std::error::Error::source(e)
                .map_or_else(|| "is badly used here".to_string(), ToString::to_string);
            option(&why)
        }
        _ if arg.is_empty() => "curl: bad command line".to_string(),
        _ => option("is badly used here"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Option<String> {
        let argv: Vec<String> = std::iter::once("curl")
            .chain(args.iter().copied())
            .map(String::from)
            .collect();
        let cmd = <CurlArgs as clap::Args>::augment_args(clap::Command::new("curl"));
        let e = cmd.try_get_matches_from(&argv).err()?;
        message(&e, &argv)
    }

    #[test]
    fn flag_errors_read_as_curls() {
        assert_eq!(
            parse(&["--bogus", "u"]).as_deref(),
            Some("curl: option --bogus: is unknown")
        );
        assert_eq!(
            parse(&["--max-time", "-1", "u"]).as_deref(),
            Some("curl: option --max-time: expected a positive numerical parameter")
        );
        assert_eq!(
            parse(&["-m", "abc", "u"]).as_deref(),
            Some("curl: option -m: expected a proper numerical parameter")
        );
        assert_eq!(
            parse(&["--retry", "-1", "u"]).as_deref(),
            Some("curl: option --retry: expected a positive numerical parameter")
        );
        assert_eq!(
            parse(&["--retry", "1.5", "u"]).as_deref(),
            Some("curl: option --retry: expected a proper numerical parameter")
        );
        assert_eq!(
            parse(&["--max-redirs", "-5", "u"]).as_deref(),
            Some("curl: option --max-redirs: expected a proper numerical parameter")
        );
        assert_eq!(parse(&["--max-redirs", "-1", "u"]), None);
        assert_eq!(parse(&["--max-time", "1e3", "u"]), None);
        assert_eq!(
            parse(&["u", "-o"]).as_deref(),
            Some("curl: option -o: requires parameter")
        );
        let argv = |s: &[&str]| s.iter().map(|w| w.to_string()).collect::<Vec<_>>();
        assert!(is_curl_command_line(&argv(&[
            "userspace",
            "--log",
            "info",
            "curl",
            "x"
        ])));
        assert!(!is_curl_command_line(&argv(&[
            "userspace",
            "serve",
            "curl"
        ])));
    }
}
