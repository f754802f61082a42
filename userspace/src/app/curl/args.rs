//! The command line: curl's names for curl's flags.
use crate::app::setup::StackArgs;
use std::path::PathBuf;

#[derive(clap::Args, Debug, Clone, Default)]
pub struct CurlArgs {
    /// URLs to fetch, one after the other (http:// is assumed when no scheme is given)
    #[arg(value_name = "URL")]
    pub urls: Vec<String>,
    /// One more URL to fetch
    #[arg(long = "url", value_name = "URL")]
    pub url_flag: Vec<String>,
    /// Write the body to FILE instead of stdout (one per URL, in order)
    #[arg(short = 'o', long, value_name = "FILE")]
    pub output: Vec<PathBuf>,
    /// Write the body to a file named like the URL's last path segment (one per URL)
    #[arg(short = 'O', long = "remote-name", action = clap::ArgAction::Count)]
    pub remote_name: u8,
    /// -O for every URL
    #[arg(long)]
    pub remote_name_all: bool,
    /// With -O, take the file name from the Content-Disposition header
    #[arg(short = 'J', long)]
    pub remote_header_name: bool,
    /// Resume at this byte offset, or "-" to resume after what the output file holds
    #[arg(short = 'C', long = "continue-at", value_name = "OFFSET")]
    pub continue_at: Option<String>,
    /// Create the output file's missing directories
    #[arg(long)]
    pub create_dirs: bool,
    /// Fetch the headers only (HEAD)
    #[arg(short = 'I', long)]
    pub head: bool,
    /// Include the response headers in the output
    #[arg(short = 'i', long)]
    pub include: bool,
    /// Extra request header "Name: value"; "Name:" removes one of ours, "Name;" sends it empty
    #[arg(short = 'H', long = "header", value_name = "HEADER")]
    pub headers: Vec<String>,
    /// Request method
    #[arg(short = 'X', long = "request", value_name = "METHOD")]
    pub method: Option<String>,
    /// POST DATA (@FILE reads FILE without CR/LF, @- reads stdin); repeated -d join with &
    #[arg(
        short = 'd',
        long = "data",
        visible_alias = "data-ascii",
        value_name = "DATA"
    )]
    pub data: Vec<String>,
    /// POST DATA as is (@FILE reads FILE byte for byte)
    #[arg(long, value_name = "DATA")]
    pub data_binary: Vec<String>,
    /// POST DATA, where @ has no meaning
    #[arg(long, value_name = "DATA")]
    pub data_raw: Vec<String>,
    /// POST DATA percent-encoded: content, =content, name=content, @file, name@file
    #[arg(long, value_name = "DATA")]
    pub data_urlencode: Vec<String>,
    /// POST JSON (Content-Type and Accept application/json); repeated --json concatenate
    #[arg(long, value_name = "DATA")]
    pub json: Vec<String>,
    /// Upload FILE with PUT ("-" is stdin, sent chunked); a URL ending in / gets its name
    #[arg(short = 'T', long, value_name = "FILE")]
    pub upload_file: Option<String>,
    /// Send the -d data in the URL's query with GET
    #[arg(short = 'G', long)]
    pub get: bool,
    /// multipart/form-data field: name=value, name=@file, name=<file, ;type= ;filename=
    #[arg(short = 'F', long = "form", value_name = "NAME=CONTENT")]
    pub form: Vec<String>,
    /// multipart/form-data field whose value is taken literally
    #[arg(long, value_name = "NAME=STRING")]
    pub form_string: Vec<String>,
    /// User-Agent header ("" sends none)
    #[arg(short = 'A', long, value_name = "NAME")]
    pub user_agent: Option<String>,
    /// Referer header
    #[arg(short = 'e', long, value_name = "URL")]
    pub referer: Option<String>,
    /// Basic authentication, USER:PASSWORD
    #[arg(short = 'u', long, value_name = "USER:PASSWORD")]
    pub user: Option<String>,
    /// Use Basic authentication (the only kind; accepted for compatibility)
    #[arg(long)]
    pub basic: bool,
    /// Send cookies: "NAME=VALUE; ..." literally, or read a cookie file
    #[arg(short = 'b', long = "cookie", value_name = "DATA|FILE")]
    pub cookie: Vec<String>,
    /// Write every cookie to FILE (Netscape format) at the end
    #[arg(short = 'c', long = "cookie-jar", value_name = "FILE")]
    pub cookie_jar: Option<PathBuf>,
    /// Write the response headers to FILE ("-" is stdout)
    #[arg(short = 'D', long = "dump-header", value_name = "FILE")]
    pub dump_header: Option<PathBuf>,
    /// Ask for a compressed response (deflate, gzip, br) and decode it
    #[arg(long)]
    pub compressed: bool,
    /// Only these bytes: a Range header, e.g. 0-99 or 100-
    #[arg(short = 'r', long, value_name = "RANGE")]
    pub range: Option<String>,
    /// Follow redirects
    #[arg(short = 'L', long)]
    pub location: bool,
    /// Most redirects to follow with -L (-1: no limit)
    #[arg(
        long,
        value_name = "N",
        default_value_t = 50,
        allow_negative_numbers = true,
        value_parser = redirect_limit
    )]
    pub max_redirs: i64,
    /// Fail with exit code 22 on HTTP errors (status >= 400), printing no body
    #[arg(short = 'f', long)]
    pub fail: bool,
    /// Like -f, but the error's body is written too
    #[arg(long)]
    pub fail_with_body: bool,
    /// No progress meter, errors still shown
    #[arg(long)]
    pub no_progress_meter: bool,
    /// Write the body as it arrives (output is not buffered)
    #[arg(short = 'N', long)]
    pub no_buffer: bool,
    /// HTTP/1.1 (the only version spoken; accepted for compatibility)
    #[arg(long = "http1.1")]
    pub http1_1: bool,
    /// Only if modified since DATE or FILE's time ("-DATE": only if not modified since)
    #[arg(
        short = 'z',
        long,
        value_name = "DATE|FILE",
        allow_hyphen_values = true
    )]
    pub time_cond: Option<String>,
    /// Give the output file the server's Last-Modified time
    #[arg(short = 'R', long)]
    pub remote_time: bool,
    /// Directory for -o and -O files
    #[arg(long, value_name = "DIR")]
    pub output_dir: Option<PathBuf>,
    /// Stop at the first failing URL
    #[arg(long)]
    pub fail_early: bool,
    /// Silent: no progress meter and no error messages
    #[arg(short = 's', long)]
    pub silent: bool,
    /// With -s, still show errors
    #[arg(short = 'S', long)]
    pub show_error: bool,
    /// Verbose: '*' info, '>' sent and '<' received header lines on stderr
    #[arg(short = 'v', long)]
    pub verbose: bool,
    /// After each transfer, print FORMAT with %{variables} (@FILE reads it)
    #[arg(short = 'w', long, value_name = "FORMAT")]
    pub write_out: Option<String>,
    /// Progress as a bar instead of the meter
    #[arg(short = '#', long)]
    pub progress_bar: bool,
    /// Most seconds the whole transfer may take
    #[arg(short = 'm', long, value_name = "SECONDS", allow_negative_numbers = true, value_parser = seconds)]
    pub max_time: Option<f64>,
    /// Most seconds the connection setup may take
    #[arg(long, value_name = "SECONDS", allow_negative_numbers = true, value_parser = seconds)]
    pub connect_timeout: Option<f64>,
    /// Send TCP keep-alive probes after SECONDS idle, then every SECONDS (as curl)
    #[arg(long, value_name = "SECONDS", allow_negative_numbers = true, value_parser = count::<u32>)]
    pub keepalive_time: Option<u32>,
    /// Retry a transient failure (timeout, 408, 429, 500, 502, 503, 504) N times
    #[arg(long, value_name = "N", default_value_t = 0, allow_negative_numbers = true, value_parser = count::<u32>)]
    pub retry: u32,
    /// Seconds between retries (default: 1, doubling)
    #[arg(long, value_name = "SECONDS", allow_negative_numbers = true, value_parser = seconds)]
    pub retry_delay: Option<f64>,
    /// No retry after this many seconds since the first try
    #[arg(long, value_name = "SECONDS", allow_negative_numbers = true, value_parser = seconds)]
    pub retry_max_time: Option<f64>,
    /// Retry on connection refused too
    #[arg(long)]
    pub retry_connrefused: bool,
    /// Retry on any error
    #[arg(long)]
    pub retry_all_errors: bool,
    /// Use this HTTP proxy ([http://][USER:PASSWORD@]HOST[:PORT], port 1080 by default;
    /// "" for none); without it http_proxy, https_proxy and all_proxy are read
    #[arg(short = 'x', long, value_name = "PROXY")]
    pub proxy: Option<String>,
    /// USER:PASSWORD for the proxy
    #[arg(short = 'U', long, value_name = "USER:PASSWORD")]
    pub proxy_user: Option<String>,
    /// Hosts reached without the proxy: comma-separated names (with their subdomains)
    /// and IPv4 networks, or "*" (overrides no_proxy)
    #[arg(long, value_name = "LIST")]
    pub noproxy: Option<String>,
    /// Most bytes a second to receive (K, M and G suffixes: 1024, 1024^2, 1024^3)
    #[arg(long, value_name = "SPEED", value_parser = rate)]
    pub limit_rate: Option<u64>,
    /// Use ADDR for HOST:PORT instead of the resolver (HOST:PORT:ADDR, repeatable)
    #[arg(long, value_name = "HOST:PORT:ADDR")]
    pub resolve: Vec<String>,
    /// Resolve names to IPv4 addresses only
    #[arg(short = '4', long, overrides_with = "ipv6")]
    pub ipv4: bool,
    /// Resolve names to IPv6 addresses only
    #[arg(short = '6', long, overrides_with = "ipv4")]
    pub ipv6: bool,
    /// Interface to use (the same as --iface)
    #[arg(long, value_name = "IF")]
    pub interface: Option<String>,
    /// https: do not verify the server's certificate
    #[arg(short = 'k', long)]
    pub insecure: bool,
    /// https: trust the CA certificates in this PEM file instead of the system's
    #[arg(long, value_name = "FILE")]
    pub cacert: Option<PathBuf>,
    /// Take [] and {} in URLs literally (no globbing)
    #[arg(short = 'g', long)]
    pub globoff: bool,
    /// Fetch the URLs at the same time, on one stack
    #[arg(short = 'Z', long)]
    pub parallel: bool,
    /// Most transfers at once with -Z
    #[arg(long, value_name = "N", default_value_t = 50, allow_negative_numbers = true, value_parser = count::<usize>)]
    pub parallel_max: usize,
    /// Print the version and the features, and exit
    #[arg(short = 'V', long)]
    pub version: bool,
    #[command(flatten)]
    pub stack: StackArgs,
    /// The -d family in command-line order: (which flag, index in its list).
    #[arg(skip)]
    pub data_order: Vec<(DataFlag, usize)>,
    /// -o and -O in command-line order: Some(index in `output`) or None for -O.
    #[arg(skip)]
    pub output_order: Vec<Option<usize>>,
    /// Positional URLs and --url ones in command-line order (empty: positional first).
    #[arg(skip)]
    pub url_order: Vec<String>,
}

/// curl's words for a number it cannot take.
const NOT_A_NUMBER: &str = "expected a proper numerical parameter";
const NEGATIVE: &str = "expected a positive numerical parameter";

/// Seconds as curl reads them (a decimal fraction; not negative).
fn seconds(arg: &str) -> Result<f64, String> {
    let value: f64 = arg.trim().parse().map_err(|_| NOT_A_NUMBER.to_string())?;
    if !value.is_finite() {
        return Err(NOT_A_NUMBER.into());
    }
    if value < 0.0 {
        return Err(NEGATIVE.into());
    }
    Ok(value)
}

/// A whole number as curl reads it for counts (not negative).
fn count<T: TryFrom<i64>>(arg: &str) -> Result<T, String> {
    let value: i64 = arg.trim().parse().map_err(|_| NOT_A_NUMBER.to_string())?;
    if value < 0 {
        return Err(NEGATIVE.into());
    }
    T::try_from(value).map_err(|_| NOT_A_NUMBER.to_string())
}

/// --limit-rate: bytes a second, with curl's B, K, M and G units (powers of 1024).
fn rate(arg: &str) -> Result<u64, String> {
    let arg = arg.trim();
    let digits = arg
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(arg.len());
    let value: f64 = arg[..digits]
        .parse()
        .map_err(|_| NOT_A_NUMBER.to_string())?;
    let unit: u64 = match arg[digits..].to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" => 1 << 10,
        "m" => 1 << 20,
        "g" => 1 << 30,
        _ => return Err("is badly used here".into()),
    };
    Ok((value * unit as f64) as u64)
}

/// --max-redirs: -1 is no limit; below that curl refuses the number.
fn redirect_limit(arg: &str) -> Result<i64, String> {
    match arg.trim().parse::<i64>() {
        Ok(n) if n >= -1 => Ok(n),
        _ => Err(NOT_A_NUMBER.into()),
    }
}

/// The flags whose pieces curl joins with '&'.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum DataFlag {
    Data,
    Raw,
    Binary,
    Urlencode,
}

impl CurlArgs {
    /// Every URL, positional ones and --url ones, in order.
    pub fn all_urls(&self) -> Vec<String> {
        if !self.url_order.is_empty() {
            return self.url_order.clone();
        }
        self.urls.iter().chain(&self.url_flag).cloned().collect()
    }

    /// The stack flags with `--interface` folded into `--iface`.
    /// The address family `-4` or `-6` asks for (the last one given wins).
    pub fn family(&self) -> super::resolve::Family {
        match (self.ipv4, self.ipv6) {
            (true, _) => super::resolve::Family::V4,
            (_, true) => super::resolve::Family::V6,
            _ => super::resolve::Family::Any,
        }
    }

    pub fn stack_args(&self) -> StackArgs {
        let mut stack = self.stack.clone();
        if stack.iface.is_none() {
            stack.iface = self.interface.clone();
        }
        stack
    }

    /// Notes the order of -d, --data-* and -o/-O as given (clap keeps each flag's
    /// values apart).
    pub fn record_order(&mut self, m: &clap::ArgMatches) {
        // Only what the command line said: a default value has a position too.
        let positions = |id: &str| -> Vec<usize> {
            if m.value_source(id) != Some(clap::parser::ValueSource::CommandLine) {
                return Vec::new();
            }
            m.indices_of(id).map(|it| it.collect()).unwrap_or_default()
        };
        let mut data = Vec::new();
        for (id, flag) in [
            ("data", DataFlag::Data),
            ("data_raw", DataFlag::Raw),
            ("data_binary", DataFlag::Binary),
            ("data_urlencode", DataFlag::Urlencode),
        ] {
            data.extend(
                positions(id)
                    .into_iter()
                    .enumerate()
                    .map(|(n, at)| (at, flag, n)),
            );
        }
        data.sort();
        self.data_order = data.into_iter().map(|(_, flag, n)| (flag, n)).collect();
        let mut urls: Vec<(usize, &String)> = positions("urls")
            .into_iter()
            .zip(&self.urls)
            .chain(positions("url_flag").into_iter().zip(&self.url_flag))
            .collect();
        if urls.len() == self.urls.len() + self.url_flag.len() {
            urls.sort();
            self.url_order = urls.into_iter().map(|(_, u)| u.clone()).collect();
        }
        let mut outputs: Vec<(usize, Option<usize>)> = positions("output")
            .into_iter()
            .enumerate()
            .map(|(n, at)| (at, Some(n)))
            .collect();
        let remote = positions("remote_name");
        if remote.len() != usize::from(self.remote_name) {
            // The positions of a counted flag are not all known: keep -o, then -O.
            return;
        }
        outputs.extend(remote.into_iter().map(|at| (at, None)));
        outputs.sort();
        self.output_order = outputs.into_iter().map(|(_, o)| o).collect();
    }

    pub fn show_errors(&self) -> bool {
        !self.silent || self.show_error
    }
}
