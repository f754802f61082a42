//! -w/--write-out: curl's %{variables} about the transfer just done.
use std::fmt::Write as _;
use std::net::IpAddr;

/// What a transfer leaves for -w.
#[derive(Debug, Clone, Default)]
pub struct Info {
    pub url: String,
    pub url_effective: String,
    pub urlnum: usize,
    pub http_code: u16,
    pub method: String,
    pub scheme: String,
    pub num_redirects: u32,
    pub num_connects: u32,
    pub redirect_url: Option<String>,
    pub referer: Option<String>,
    pub remote_ip: Option<IpAddr>,
    pub remote_port: Option<u16>,
    pub local_ip: Option<IpAddr>,
    pub local_port: Option<u16>,
    pub size_download: u64,
    pub size_header: u64,
    pub size_request: u64,
    pub size_upload: u64,
    pub time_namelookup: f64,
    pub time_connect: f64,
    pub time_appconnect: f64,
    pub time_pretransfer: f64,
    pub time_starttransfer: f64,
    pub time_redirect: f64,
    pub time_total: f64,
    pub exitcode: i32,
    pub errormsg: Option<String>,
    pub filename_effective: Option<String>,
    /// The last response's headers, in order.
    pub headers: Vec<(String, String)>,
}

impl Info {
    fn content_type(&self) -> Option<&str> {
        self.header("content-type")
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn speed(&self, size: u64) -> u64 {
        if self.time_total > 0.0 {
            (size as f64 / self.time_total) as u64
        } else {
            0
        }
    }
}

/// A variable's value: text for %{name}, JSON for %{json}.
enum Value {
    Str(Option<String>),
    Int(i64),
    /// A status code: three digits in text (000 when there was no response).
    Code(u16),
    Time(f64),
}

impl Value {
    fn text(&self) -> String {
        match self {
            Value::Str(s) => s.clone().unwrap_or_default(),
            Value::Int(i) => i.to_string(),
            Value::Code(c) => format!("{c:03}"),
            Value::Time(t) => format!("{t:.6}"),
        }
    }
    fn json(&self) -> String {
        match self {
            Value::Str(Some(s)) => json_string(s),
            Value::Str(None) => "null".into(),
            Value::Int(i) => i.to_string(),
            Value::Code(c) => c.to_string(),
            Value::Time(t) => format!("{t:.6}"),
        }
    }
}

fn json_string(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into())
}

/// The variables %{json} lists, in curl's order.
const JSON_ORDER: &[&str] = &[
    "certs",
    "content_type",
    "errormsg",
    "exitcode",
    "filename_effective",
    "ftp_entry_path",
    "http_code",
    "http_connect",
    "http_version",
    "local_ip",
    "local_port",
    "method",
    "num_certs",
    "num_connects",
    "num_headers",
    "num_redirects",
    "proxy_ssl_verify_result",
    "redirect_url",
    "referer",
    "remote_ip",
    "remote_port",
    "response_code",
    "scheme",
    "size_download",
    "size_header",
    "size_request",
    "size_upload",
    "speed_download",
    "speed_upload",
    "ssl_verify_result",
    "time_appconnect",
    "time_connect",
    "time_namelookup",
    "time_pretransfer",
    "time_redirect",
    "time_starttransfer",
    "time_total",
    "url",
    "url_effective",
    "urlnum",
];

fn variable(info: &Info, name: &str) -> Option<Value> {
    let s = |v: Option<&str>| Value::Str(v.map(str::to_string));
    let int = |v: u64| Value::Int(v as i64);
    Some(match name {
        "certs" => s(Some("")),
        "content_type" => s(info.content_type()),
        "errormsg" => s(info.errormsg.as_deref()),
        "exitcode" => Value::Int(info.exitcode.into()),
        "filename_effective" => s(info.filename_effective.as_deref()),
        "ftp_entry_path" => s(None),
        "http_code" | "response_code" => Value::Code(info.http_code),
        "http_connect" | "num_certs" | "proxy_ssl_verify_result" | "ssl_verify_result" => {
            Value::Int(0)
        }
        "http_version" => s(Some(if info.http_code == 0 { "0" } else { "1.1" })),
        "local_ip" => s(info.local_ip.map(|i| i.to_string()).as_deref()),
        "local_port" => int(info.local_port.unwrap_or(0).into()),
        "method" => s(Some(&info.method)),
        "num_connects" => int(info.num_connects.into()),
        "num_headers" => int(info.headers.len() as u64),
        "num_redirects" => int(info.num_redirects.into()),
        "redirect_url" => s(info.redirect_url.as_deref()),
        "referer" => s(info.referer.as_deref()),
        "remote_ip" => s(info.remote_ip.map(|i| i.to_string()).as_deref()),
        "remote_port" => int(info.remote_port.unwrap_or(0).into()),
        "scheme" => s(Some(&info.scheme)),
        "size_download" => int(info.size_download),
        "size_header" => int(info.size_header),
        "size_request" => int(info.size_request),
        "size_upload" => int(info.size_upload),
        "speed_download" => int(info.speed(info.size_download)),
        "speed_upload" => int(info.speed(info.size_upload)),
        "time_appconnect" => Value::Time(info.time_appconnect),
        "time_connect" => Value::Time(info.time_connect),
        "time_namelookup" => Value::Time(info.time_namelookup),
        "time_pretransfer" => Value::Time(info.time_pretransfer),
        "time_redirect" => Value::Time(info.time_redirect),
        "time_starttransfer" => Value::Time(info.time_starttransfer),
        "time_total" => Value::Time(info.time_total),
        "url" => s(Some(&info.url)),
        "url_effective" => s(Some(&info.url_effective)),
        "urlnum" => int(info.urlnum as u64),
        _ => return None,
    })
}

/// %{json}: every variable, and curl_version.
pub fn json(info: &Info) -> String {
    let mut out = String::from("{");
    for name in JSON_ORDER {
        if let Some(v) = variable(info, name) {
            let _ = write!(out, "{}:{},", json_string(name), v.json());
        }
    }
    let _ = write!(
        out,
        "\"curl_version\":{}}}",
        json_string(super::VERSION_LINE)
    );
    out
}

/// %{header_json}: the last response's headers, lower-cased names, values in arrays.
pub fn header_json(info: &Info) -> String {
    let mut names: Vec<String> = Vec::new();
    for (n, _) in &info.headers {
        let n = n.to_ascii_lowercase();
        if !names.contains(&n) {
            names.push(n);
        }
    }
    let entries: Vec<String> = names
        .iter()
        .map(|n| {
            let values: Vec<String> = info
                .headers
                .iter()
                .filter(|(h, _)| h.eq_ignore_ascii_case(n))
                .map(|(_, v)| json_string(v))
                .collect();
            format!("{}:[{}]", json_string(n), values.join(","))
        })
        .collect();
    format!("{{{}\n}}", entries.join(",\n"))
}

/// Where -w text goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

/// Expands FORMAT into pieces for stdout and stderr, in order.
pub fn render(format: &str, info: &Info) -> Vec<(Stream, String)> {
    let mut out = Vec::new();
    let mut stream = Stream::Stdout;
    let mut cur = String::new();
    let mut rest = format;
    while let Some(c) = rest.chars().next() {
        if let Some(after) = rest.strip_prefix("%{")
            && let Some(end) = after.find('}')
        {
            // %{header{name}} has a brace inside.
            let (name, skip) = if after.starts_with("header{") {
                match after.find("}}") {
                    Some(e) => (&after[..e + 1], e + 2),
                    None => (&after[..end], end + 1),
                }
            } else {
                (&after[..end], end + 1)
            };
            rest = &after[skip..];
            match name {
                "json" => cur.push_str(&json(info)),
                "header_json" => cur.push_str(&header_json(info)),
                "stdout" | "stderr" => {
                    out.push((stream, std::mem::take(&mut cur)));
                    stream = if name == "stdout" {
                        Stream::Stdout
                    } else {
                        Stream::Stderr
                    };
                }
                "onerror" => {
                    if info.exitcode == 0 {
                        break;
                    }
                }
                _ => {
                    if let Some(h) = name
                        .strip_prefix("header{")
                        .and_then(|h| h.strip_suffix('}'))
                    {
                        let values: Vec<&str> = info
                            .headers
                            .iter()
                            .filter(|(n, _)| n.eq_ignore_ascii_case(h))
                            .map(|(_, v)| v.as_str())
                            .collect();
                        cur.push_str(&values.join(", "));
                    } else if let Some(v) = variable(info, name) {
                        cur.push_str(&v.text());
                    } else {
                        eprintln!("curl: unknown --write-out variable: '{name}'");
                    }
                }
            }
            continue;
        }
        if let Some(after) = rest.strip_prefix("%%") {
            cur.push('%');
            rest = after;
            continue;
        }
        if let Some(after) = rest.strip_prefix('\\')
            && let Some(e) = after.chars().next()
            && matches!(e, 'n' | 'r' | 't')
        {
            cur.push(match e {
                'n' => '\n',
                'r' => '\r',
                _ => '\t',
            });
            rest = &after[1..];
            continue;
        }
        cur.push(c);
        rest = &rest[c.len_utf8()..];
    }
    out.push((stream, cur));
    out.retain(|(_, s)| !s.is_empty());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info() -> Info {
        Info {
            url: "http://h/".into(),
            url_effective: "http://h/x".into(),
            http_code: 200,
            method: "GET".into(),
            scheme: "HTTP".into(),
            size_download: 79,
            time_total: 0.5,
            remote_ip: Some(IpAddr::from([10, 0, 0, 1])),
            remote_port: Some(80),
            headers: vec![
                ("Content-Type".into(), "text/plain".into()),
                ("Set-Cookie".into(), "a=1".into()),
                ("set-cookie".into(), "b=2".into()),
            ],
            ..Default::default()
        }
    }

    fn text(format: &str, info: &Info) -> String {
        render(format, info)
            .into_iter()
            .map(|(_, s)| s)
            .collect::<Vec<_>>()
            .join("|")
    }

    #[test]
    fn variables_escapes_and_percent() {
        let i = info();
        assert_eq!(
            text(
                "%{http_code} %{size_download} %{time_total} %{url_effective}\\n%%{x}\\t%{content_type} %{remote_ip}:%{remote_port} %{speed_download} %{exitcode} [%{errormsg}] %{header{set-cookie}}",
                &i
            ),
            "200 79 0.500000 http://h/x\n%{x}\ttext/plain 10.0.0.1:80 158 0 [] a=1, b=2"
        );
        assert_eq!(text("a\\qb", &i), "a\\qb");
        let none = Info::default();
        assert_eq!(text("%{http_code}", &none), "000");
        assert!(json(&none).contains("\"http_code\":0,"));
        assert_eq!(text("ok%{onerror}bad", &i), "ok");
        let split = render("a%{stderr}b%{stdout}c", &i);
        assert_eq!(
            split,
            vec![
                (Stream::Stdout, "a".into()),
                (Stream::Stderr, "b".into()),
                (Stream::Stdout, "c".into())
            ]
        );
    }

    #[test]
    fn header_json_and_json_are_curls_shapes() {
        let i = info();
        assert_eq!(
            header_json(&i),
            "{\"content-type\":[\"text/plain\"],\n\"set-cookie\":[\"a=1\",\"b=2\"]\n}"
        );
        let j = json(&i);
        let v: serde_json::Value = serde_json::from_str(&j).unwrap();
        assert_eq!(v["http_code"], 200);
        assert_eq!(v["errormsg"], serde_json::Value::Null);
        assert_eq!(v["time_total"], 0.5);
        assert!(j.starts_with("{\"certs\":\"\",\"content_type\":\"text/plain\","));
    }
}
