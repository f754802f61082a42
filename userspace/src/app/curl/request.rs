//! Building a request as curl does: the body from -d and friends, --json or -F, and the
//! head with curl's header order, where -H replaces, removes or empties our headers.
use super::args::DataFlag;
use super::form;
use super::{CurlArgs, CurlError, fail};
use base64::Engine;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC};
use std::io::Read;

/// curl_easy_escape: everything but ALPHA, DIGIT and -._~ is percent-encoded.
const ESCAPE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

pub fn escape(bytes: &[u8]) -> String {
    percent_encoding::percent_encode(bytes, ESCAPE).to_string()
}

/// Bodies larger than this go after the server's 100 Continue.
pub const EXPECT_100_THRESHOLD: usize = 1 << 20;

/// One -H argument.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Custom {
    /// "Name: value" (or "Name;" sent as "Name:"), the line to send.
    Set { name: String, line: String },
    /// "Name:" removes the header we would send.
    Remove { name: String },
}

impl Custom {
    /// Parses -H as curl does; a line with neither ':' nor a final ';' is ignored.
    pub fn parse(raw: &str) -> Option<Custom> {
        if let Some((name, value)) = raw.split_once(':') {
            let name = name.trim().to_string();
            // No name, no header: curl drops ": value".
            if name.is_empty() {
                return None;
            }
            if value.trim().is_empty() {
                return Some(Custom::Remove { name });
            }
            return Some(Custom::Set {
                name,
                line: raw.to_string(),
            });
        }
        let name = raw.strip_suffix(';')?.trim().to_string();
        let line = format!("{name}:");
        Some(Custom::Set { name, line })
    }

    pub fn name(&self) -> &str {
        match self {
            Custom::Set { name, .. } | Custom::Remove { name } => name,
        }
    }
}

/// The -H arguments, with `-H @file` (or `@-`) read one header a line.
fn header_lines(args: &CurlArgs) -> Result<Vec<String>, CurlError> {
    let mut lines = Vec::new();
    for h in &args.headers {
        let Some(source) = h.strip_prefix('@') else {
            lines.push(h.clone());
            continue;
        };
        let text = if source == "-" {
            let mut s = String::new();
            std::io::stdin().read_to_string(&mut s).map(|_| s)
        } else {
            std::fs::read_to_string(source)
        }
        .map_err(|e| fail(26, format!("Failed to open {source}: {e}")))?;
        lines.extend(
            text.lines()
                .map(|l| l.trim_end_matches('\r').to_string())
                .filter(|l| !l.is_empty()),
        );
    }
    Ok(lines)
}

/// A request body and the Content-Type curl gives it unless -H says otherwise.
#[derive(Debug, Clone, Default)]
pub struct Payload {
    pub bytes: Vec<u8>,
    pub content_type: Option<String>,
    /// -T: an upload (PUT, always Expect: 100-continue).
    pub upload: bool,
    /// -T -: the bytes are already in the chunked coding (the size was not known).
    pub chunked: bool,
}

/// The body of -T: a file, or stdin sent chunked, as curl sends a stream of unknown
/// length.
fn upload(path: &str) -> Result<Payload, CurlError> {
    let read_error = |e: std::io::Error| {
        fail(
            26,
            format!("Failed to open/read local data from file/application: {e}"),
        )
    };
    if path == "-" {
        let mut data = Vec::new();
        std::io::stdin()
            .read_to_end(&mut data)
            .map_err(read_error)?;
        let mut bytes = Vec::new();
        if !data.is_empty() {
            bytes.extend_from_slice(format!("{:x}\r\n", data.len()).as_bytes());
            bytes.extend_from_slice(&data);
            bytes.extend_from_slice(b"\r\n");
        }
        bytes.extend_from_slice(b"0\r\n\r\n");
        return Ok(Payload {
            bytes,
            upload: true,
            chunked: true,
            ..Default::default()
        });
    }
    Ok(Payload {
        bytes: std::fs::read(path).map_err(read_error)?,
        upload: true,
        ..Default::default()
    })
}

/// -u USER without a colon: curl asks for the password, on the terminal when there is
/// one (without echo), else it reads stdin once and drops the last byte read (the
/// newline); nothing read is an empty password.
fn complete_user(user: &str) -> String {
    if user.contains(':') {
        return user.to_string();
    }
    let prompt = format!("Enter host password for user '{user}':");
    let has_terminal = std::fs::File::open("/dev/tty").is_ok();
    let password = if has_terminal {
        let password = rpassword::prompt_password(&prompt).unwrap_or_default();
        eprintln!();
        password
    } else {
        eprint!("{prompt}");
        // curl's buffer: 256 bytes, one read.
        let mut buf = [0u8; 256];
        let n = std::io::stdin().read(&mut buf).unwrap_or(0);
        String::from_utf8_lossy(&buf[..n.saturating_sub(1)]).into_owned()
    };
    format!("{user}:{password}")
}

/// What every request of one command line shares.
#[derive(Debug, Clone, Default)]
pub struct Prepared {
    /// -u, with the password asked for when it was not given.
    pub user: Option<String>,
    pub custom: Vec<Custom>,
    /// -d data for the query (-G), or the request body.
    pub data: Option<Vec<u8>>,
    pub payload: Option<Payload>,
    pub time_cond: Option<TimeCond>,
}

/// -z: a time condition on the document.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeCond {
    pub time: std::time::SystemTime,
    /// "-z -DATE": the document must not be newer (If-Unmodified-Since).
    pub unmodified: bool,
}

impl TimeCond {
    /// A date (the HTTP formats) or a file whose time to use; None (with curl's
    /// warning) for neither.
    pub fn parse(arg: &str, warn: bool) -> Option<TimeCond> {
        let (unmodified, value) = match arg.strip_prefix('-') {
            Some(rest) => (true, rest),
            None => (false, arg),
        };
        let time = httpdate::parse_http_date(value)
            .ok()
            .or_else(|| std::fs::metadata(value).and_then(|m| m.modified()).ok());
        if time.is_none() && warn {
            eprintln!("Warning: Illegal date format for -z, --time-cond (and not a file name). ");
            eprintln!(
                "Warning: Disabling time condition. See curl_getdate(3) for valid date syntax."
            );
        }
        Some(TimeCond {
            time: time?,
            unmodified,
        })
    }

    fn header(&self) -> (&'static str, String) {
        let name = if self.unmodified {
            "If-Unmodified-Since"
        } else {
            "If-Modified-Since"
        };
        (name, httpdate::fmt_http_date(self.time))
    }

    /// The document (of this Last-Modified) does not meet the condition: curl drops it.
    pub fn unmet(&self, last_modified: Option<&str>) -> bool {
        let Some(lm) = last_modified.and_then(|v| httpdate::parse_http_date(v).ok()) else {
            return false;
        };
        if self.unmodified {
            lm > self.time
        } else {
            lm <= self.time
        }
    }
}

/// Reads `@file` / `@-` contents; curl makes an empty POST (with a warning) when the
/// file cannot be read.
fn read_source(name: &str, show_errors: bool) -> Vec<u8> {
    let result = if name == "-" {
        let mut v = Vec::new();
        std::io::stdin().read_to_end(&mut v).map(|_| v)
    } else {
        std::fs::read(name)
    };
    result.unwrap_or_else(|_| {
        if show_errors {
            eprintln!(
                "Warning: Couldn't read data from file \"{name}\", this makes an empty POST."
            );
        }
        Vec::new()
    })
}

/// One --data-urlencode argument, encoded.
fn urlencode_arg(arg: &str, show_errors: bool) -> Vec<u8> {
    // "name@file", "@file", "name=content", "=content" or "content".
    let (name, content) = match arg.find(['=', '@']) {
        Some(i) if arg.as_bytes()[i] == b'@' => {
            (&arg[..i], read_source(&arg[i + 1..], show_errors))
        }
        Some(i) => (&arg[..i], arg.as_bytes()[i + 1..].to_vec()),
        None => ("", arg.as_bytes().to_vec()),
    };
    // curl's --data-urlencode writes a space as '+'.
    let encoded = escape(&content).replace("%20", "+");
    if name.is_empty() {
        encoded.into_bytes()
    } else {
        format!("{name}={encoded}").into_bytes()
    }
}

/// The -d, --data-raw, --data-binary and --data-urlencode pieces joined with '&'.
pub fn collect_data(args: &CurlArgs) -> Option<Vec<u8>> {
    let show = !args.silent;
    // Command-line order when main recorded it; else flag by flag.
    let order: Vec<(DataFlag, usize)> = if args.data_order.is_empty() {
        let each = |flag, n: usize| (0..n).map(move |i| (flag, i));
        each(DataFlag::Data, args.data.len())
            .chain(each(DataFlag::Raw, args.data_raw.len()))
            .chain(each(DataFlag::Binary, args.data_binary.len()))
            .chain(each(DataFlag::Urlencode, args.data_urlencode.len()))
            .collect()
    } else {
        args.data_order.clone()
    };
    let pieces: Vec<Vec<u8>> = order
        .into_iter()
        .filter_map(|(flag, i)| {
            Some(match flag {
                DataFlag::Data => {
                    let d = args.data.get(i)?;
                    match d.strip_prefix('@') {
                        Some(name) => read_source(name, show)
                            .into_iter()
                            .filter(|&b| b != b'\r' && b != b'\n')
                            .collect(),
                        None => d.as_bytes().to_vec(),
                    }
                }
                DataFlag::Raw => args.data_raw.get(i)?.as_bytes().to_vec(),
                DataFlag::Binary => {
                    let d = args.data_binary.get(i)?;
                    match d.strip_prefix('@') {
                        Some(name) => read_source(name, show),
                        None => d.as_bytes().to_vec(),
                    }
                }
                DataFlag::Urlencode => urlencode_arg(args.data_urlencode.get(i)?, show),
            })
        })
        .collect();
    if pieces.is_empty() {
        return None;
    }
    Some(pieces.join(&b'&'))
}

/// The --json pieces, concatenated.
fn collect_json(args: &CurlArgs) -> Option<Vec<u8>> {
    if args.json.is_empty() {
        return None;
    }
    let mut out = Vec::new();
    for j in &args.json {
        match j.strip_prefix('@') {
            Some(name) => out.extend(read_source(name, !args.silent)),
            None => out.extend_from_slice(j.as_bytes()),
        }
    }
    Some(out)
}

impl Prepared {
    pub fn new(args: &CurlArgs) -> Result<Prepared, CurlError> {
        let mut custom: Vec<Custom> = header_lines(args)?
            .iter()
            .filter_map(|h| Custom::parse(h))
            .collect();
        let data = collect_data(args);
        let json = collect_json(args);
        let has_form = !args.form.is_empty() || !args.form_string.is_empty();
        if has_form && (data.is_some() || json.is_some()) {
            return Err(fail(
                2,
                "You can only select one HTTP request method! You asked for both POST \
                 (-d, --data) and multipart formpost (-F, --form).",
            ));
        }
        if (has_form || data.is_some() || json.is_some()) && args.head {
            return Err(fail(
                2,
                "You can only select one HTTP request method! You asked for both HEAD \
                 (-I, --head) and POST (-d, --data).",
            ));
        }
        let mut payload = None;
        if let Some(json) = json {
            // --json adds its headers after the user's, unless the user set them.
            for (name, value) in [
                ("Content-Type", "application/json"),
                ("Accept", "application/json"),
            ] {
                if !custom.iter().any(|c| c.name().eq_ignore_ascii_case(name)) {
                    custom.push(Custom::Set {
                        name: name.into(),
                        line: format!("{name}: {value}"),
                    });
                }
            }
            let mut bytes = data.clone().unwrap_or_default();
            if !bytes.is_empty() {
                bytes.push(b'&');
            }
            bytes.extend(json);
            payload = Some(Payload {
                bytes,
                content_type: Some("application/json".into()),
                ..Default::default()
            });
        } else if has_form {
            let (bytes, boundary) = form::build(&args.form, &args.form_string)?;
            payload = Some(Payload {
                bytes,
                content_type: Some(format!("multipart/form-data; boundary={boundary}")),
                ..Default::default()
            });
        } else if let Some(d) = &data
            && !args.get
        {
            payload = Some(Payload {
                bytes: d.clone(),
                content_type: Some("application/x-www-form-urlencoded".into()),
                ..Default::default()
            });
        }
        if let Some(path) = &args.upload_file {
            payload = Some(upload(path)?);
        }
        Ok(Prepared {
            user: args.user.as_deref().map(complete_user),
            custom,
            data,
            payload,
            time_cond: args
                .time_cond
                .as_deref()
                .and_then(|t| TimeCond::parse(t, !args.silent)),
        })
    }

    fn custom(&self, name: &str) -> Option<&Custom> {
        self.custom
            .iter()
            .rev()
            .find(|c| c.name().eq_ignore_ascii_case(name))
    }
}

/// The parts of one request that change from hop to hop.
pub struct Hop<'a> {
    pub method: &'a str,
    /// Path and query.
    pub path: &'a str,
    /// Host header value (with :port when not the default).
    pub host: &'a str,
    /// Credentials for this hop ("user:password").
    pub credentials: Option<&'a str>,
    pub range: Option<&'a str>,
    pub cookie: Option<&'a str>,
    pub body: Option<&'a Payload>,
    /// Plain http through a proxy: its credentials, if any.
    pub proxy: Option<Option<&'a str>>,
}

pub fn basic_auth(credentials: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(credentials)
}

/// The request head, in curl's order: Host, Authorization, Range, User-Agent, Accept,
/// Accept-Encoding, Referer, Cookie, the -H headers, Content-Length, Content-Type.
pub fn build_head(args: &CurlArgs, prepared: &Prepared, hop: &Hop<'_>) -> Vec<u8> {
    let mut head = format!("{} {} HTTP/1.1\r\n", hop.method, hop.path);
    let mut ours = |name: &str, value: Option<String>| {
        match prepared.custom(name) {
            // A custom Host takes our Host's place; other custom headers go below.
            Some(Custom::Set { line, .. }) if name.eq_ignore_ascii_case("host") => {
                head.push_str(line);
                head.push_str("\r\n");
            }
            Some(_) => {}
            None => {
                if let Some(v) = value {
                    head.push_str(&format!("{name}: {v}\r\n"));
                }
            }
        }
    };
    ours("Host", Some(hop.host.to_string()));
    ours(
        "Proxy-Authorization",
        hop.proxy
            .flatten()
            .map(|c| format!("Basic {}", basic_auth(c))),
    );
    ours(
        "Authorization",
        hop.credentials.map(|c| format!("Basic {}", basic_auth(c))),
    );
    ours("Range", hop.range.map(|r| format!("bytes={r}")));
    let agent = match &args.user_agent {
        Some(a) if a.is_empty() => None,
        Some(a) => Some(a.clone()),
        None => Some(super::USER_AGENT.to_string()),
    };
    ours("User-Agent", agent);
    ours("Accept", Some("*/*".into()));
    ours(
        "Accept-Encoding",
        args.compressed
            .then(|| super::response::ACCEPT_ENCODING.to_string()),
    );
    ours("Referer", args.referer.clone());
    ours(
        "Proxy-Connection",
        hop.proxy.map(|_| "Keep-Alive".to_string()),
    );
    ours("Cookie", hop.cookie.map(str::to_string));
    if let Some(tc) = &prepared.time_cond {
        let (name, value) = tc.header();
        ours(name, Some(value));
    }
    for c in &prepared.custom {
        if let Custom::Set { name, line } = c
            && !name.eq_ignore_ascii_case("host")
        {
            head.push_str(line);
            head.push_str("\r\n");
        }
    }
    if let Some(body) = hop.body {
        let mut ours = |name: &str, value: String| {
            if prepared.custom(name).is_none() {
                head.push_str(&format!("{name}: {value}\r\n"));
            }
        };
        if body.chunked {
            ours("Transfer-Encoding", "chunked".into());
        } else {
            ours("Content-Length", body.bytes.len().to_string());
        }
        if let Some(t) = &body.content_type {
            ours("Content-Type", t.clone());
        }
        // curl asks before an upload, and before sending a body over 1 MiB.
        if body.upload || body.bytes.len() > EXPECT_100_THRESHOLD {
            ours("Expect", "100-continue".into());
        }
    }
    head.push_str("\r\n");
    head.into_bytes()
}

/// The method of the first request.
pub fn initial_method(args: &CurlArgs, prepared: &Prepared) -> String {
    if let Some(m) = &args.method {
        return m.clone();
    }
    if args.head {
        "HEAD".into()
    } else if prepared.payload.as_ref().is_some_and(|p| p.upload) {
        "PUT".into()
    } else if prepared.payload.is_some() {
        "POST".into()
    } else {
        "GET".into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(f: impl FnOnce(&mut CurlArgs)) -> CurlArgs {
        let mut a = CurlArgs {
            user_agent: Some("ua".into()),
            ..Default::default()
        };
        f(&mut a);
        a
    }

    fn head(a: &CurlArgs) -> String {
        let p = Prepared::new(a).unwrap();
        let method = initial_method(a, &p);
        let hop = Hop {
            method: &method,
            path: "/",
            host: "h",
            credentials: p.user.as_deref(),
            range: a.range.as_deref(),
            cookie: None,
            body: p.payload.as_ref(),
            proxy: None,
        };
        String::from_utf8(build_head(a, &p, &hop)).unwrap()
    }

    #[test]
    fn custom_headers_replace_remove_and_empty_ours() {
        let a = args(|a| {
            a.headers = vec![
                "Host: example.com".into(),
                "Accept:".into(),
                "X-E;".into(),
                "no colon".into(),
                "X-A: b".into(),
            ]
        });
        assert_eq!(
            head(&a),
            "GET / HTTP/1.1\r\nHost: example.com\r\nUser-Agent: ua\r\nX-E:\r\nX-A: b\r\n\r\n"
        );
        let a = args(|a| a.headers = vec!["Accept: x".into(), "User-Agent: me".into()]);
        assert_eq!(
            head(&a),
            "GET / HTTP/1.1\r\nHost: h\r\nAccept: x\r\nUser-Agent: me\r\n\r\n"
        );
    }

    #[test]
    fn data_pieces_join_with_ampersand_and_files_lose_newlines() {
        let dir = std::env::temp_dir().join(format!("curl-data-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("d.txt");
        std::fs::write(&file, "x\r\ny\nz").unwrap();
        let at = format!("@{}", file.display());
        let a = args(|a| {
            a.data = vec!["a=1".into(), at.clone()];
            a.data_binary = vec![at.clone()];
            a.data_raw = vec!["@raw".into()];
            a.data_urlencode = vec!["n=a b&c".into(), "=é".into(), "plain text".into()];
        });
        assert_eq!(
            String::from_utf8(collect_data(&a).unwrap()).unwrap(),
            "a=1&xyz&@raw&x\r\ny\nz&n=a+b%26c&%C3%A9&plain+text"
        );
        let h = head(&a);
        assert!(h.starts_with("POST / HTTP/1.1\r\n"), "{h}");
        assert!(
            h.ends_with(
                "Content-Length: 47\r\nContent-Type: application/x-www-form-urlencoded\r\n\r\n"
            ),
            "{h}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn json_sets_its_headers_after_the_users() {
        let a = args(|a| {
            a.json = vec!["{\"a\":1}".into(), "[2]".into()];
            a.headers = vec!["X: y".into()];
        });
        let p = Prepared::new(&a).unwrap();
        assert_eq!(p.payload.as_ref().unwrap().bytes, b"{\"a\":1}[2]");
        assert_eq!(
            head(&a),
            "POST / HTTP/1.1\r\nHost: h\r\nUser-Agent: ua\r\nX: y\r\nContent-Type: application/json\r\nAccept: application/json\r\nContent-Length: 10\r\n\r\n"
        );
    }

    #[test]
    fn credentials_range_and_empty_agent() {
        let a = args(|a| {
            a.user = Some("us:pw".into());
            a.range = Some("0-5".into());
            a.user_agent = Some(String::new());
            a.referer = Some("r".into());
        });
        assert_eq!(
            head(&a),
            "GET / HTTP/1.1\r\nHost: h\r\nAuthorization: Basic dXM6cHc=\r\nRange: bytes=0-5\r\nAccept: */*\r\nReferer: r\r\n\r\n"
        );
    }
}
