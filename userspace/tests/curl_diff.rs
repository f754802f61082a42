//! The differential suite: the same command lines through the real curl (the kernel's
//! TCP) and `userspace curl` (the stack), in the namespace world, against nginx and a
//! request-echoing server. Each must give the same exit code, the same stdout bytes and
//! the same files. Then `serve` is checked with the real curl: Range, conditionals,
//! redirects, listings and types.
//!
//! Normalised, and only there, is what curl itself does not repeat from run to run:
//! timings and speeds in -w, the local port and request size in %{json} (the
//! User-Agent differs, so the request size does), the Date header nginx sends, and the
//! -V text. The echo server replaces the User-Agent value and the multipart boundary
//! (curl picks one at random) before echoing.
#[allow(unused_imports)]
mod common;
use common::*;
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use xtask::world::HTTP_ECHO_PORT;

fn world(opts: WorldOptions) -> World {
    World::up(&opts).expect("build the namespace world")
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Norm {
    /// Byte for byte.
    Exact,
    /// Digits of -w timings and speeds (the numbers differ from run to run).
    Numbers,
    /// %{json}: every key but the time-dependent ones.
    Json,
    /// nginx's Date header.
    Date,
    /// Only the exit code (-V prints each program's own version).
    ExitOnly,
}

struct Case {
    args: Vec<String>,
    stdin: Vec<u8>,
    norm: Norm,
    /// Environment variables for both curls (the proxy ones are unset otherwise).
    env: Vec<(&'static str, String)>,
}

/// The environment variables curl reads for proxies.
const PROXY_VARIABLES: &[&str] = &[
    "http_proxy",
    "https_proxy",
    "HTTPS_PROXY",
    "all_proxy",
    "ALL_PROXY",
    "no_proxy",
    "NO_PROXY",
];

/// What a run leaves: exit code, stdout, and every file in its directory.
#[derive(Debug, PartialEq, Eq)]
struct Outcome {
    code: Option<i32>,
    stdout: Vec<u8>,
    files: BTreeMap<String, Vec<u8>>,
}

const PART: &str = "<!doctype html>\n<htm";

/// The files each run starts with.
fn fixtures(dir: &Path) {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("a.txt"), "hello\n").unwrap();
    // A fixed time for -z FILE.
    std::fs::File::options()
        .append(true)
        .open(dir.join("a.txt"))
        .and_then(|f| {
            f.set_modified(std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_577_836_800))
        })
        .unwrap();
    std::fs::write(dir.join("crlf.txt"), "x=1\r\ny=2\nz=3").unwrap();
    std::fs::write(dir.join("part.html"), PART).unwrap();
    std::fs::write(dir.join("full.html"), xtask::world::INDEX_HTML).unwrap();
    // One byte over curl's threshold for Expect: 100-continue.
    std::fs::write(dir.join("big.txt"), vec![b'a'; (1 << 20) + 1]).unwrap();
    std::fs::write(dir.join("fmt.txt"), "code=%{http_code}\\n").unwrap();
    std::fs::write(
        dir.join("headers.txt"),
        "X-From-File: 1\r\nAccept: text/x\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("cookies.txt"),
        format!(
            "# Netscape HTTP Cookie File\n\n{SERVER_IP}\tFALSE\t/\tFALSE\t0\tfromfile\tyes\n{SERVER_IP}\tFALSE\t/other\tFALSE\t0\tnot\tsent\n"
        ),
    )
    .unwrap();
}

/// The files the echo server serves, with their Content-Encoding.
fn echo_files(w: &World) {
    let files = w.dir.join("files");
    let text = b"compressible text, compressible text, compressible text\n".repeat(30);
    std::fs::write(files.join("f.txt"), b"plain file\n").unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&text).unwrap();
    std::fs::write(files.join("gz.txt"), gz.finish().unwrap()).unwrap();
    std::fs::write(files.join("gz.txt.enc"), "gzip").unwrap();
    let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
    z.write_all(&text).unwrap();
    std::fs::write(files.join("zz.txt"), z.finish().unwrap()).unwrap();
    std::fs::write(files.join("zz.txt.enc"), "deflate").unwrap();
    let mut br = Vec::new();
    {
        let mut c = brotli::CompressorWriter::new(&mut br, 4096, 5, 22);
        c.write_all(&text).unwrap();
    }
    std::fs::write(files.join("br.txt"), br).unwrap();
    std::fs::write(files.join("br.txt.enc"), "br").unwrap();
    let zstd =
        ruzstd::encoding::compress_to_vec(&text[..], ruzstd::encoding::CompressionLevel::Fastest);
    std::fs::write(files.join("zs.txt"), zstd).unwrap();
    std::fs::write(files.join("zs.txt.enc"), "zstd").unwrap();
    std::fs::write(files.join("bin.dat"), [0u8, 1, 2, 0, 255]).unwrap();
    std::fs::write(files.join("bin.dat.type"), "application/octet-stream").unwrap();
}

fn run_case(w: &World, dir: &Path, ours: bool, c: &Case) -> Outcome {
    fixtures(dir);
    let mut cmd = w.exec(&w.host);
    // No controlling terminal (as in CI): a password prompt reads stdin, as curl's does.
    cmd.args(["setsid", "-w", "timeout", "60"]);
    if ours {
        cmd.args([BIN, "curl"]);
    } else {
        cmd.arg("curl");
    }
    for name in PROXY_VARIABLES {
        cmd.env_remove(name);
    }
    cmd.envs(c.env.iter().map(|(k, v)| (k, v)));
    let mut child = cmd
        .args(&c.args)
        .current_dir(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(&c.stdin).unwrap();
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    let mut files = BTreeMap::new();
    collect_files(dir, dir, &mut files);
    if ours && !out.stderr.is_empty() {
        eprintln!("  ours stderr: {}", text(&out.stderr).trim_end());
    }
    let mut outcome = Outcome {
        code: out.status.code(),
        stdout: out.stdout,
        files,
    };
    normalise(&mut outcome, c.norm);
    outcome
}

/// Every file under `dir` (subdirectories too), by path relative to `base`.
fn collect_files(base: &Path, dir: &Path, files: &mut BTreeMap<String, Vec<u8>>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            collect_files(base, &path, files);
        } else {
            let name = path.strip_prefix(base).unwrap().display().to_string();
            files.insert(name, std::fs::read(&path).unwrap_or_default());
        }
    }
}

fn normalise(o: &mut Outcome, norm: Norm) {
    let fix = |bytes: &mut Vec<u8>, f: &dyn Fn(&str) -> String| {
        *bytes = f(&String::from_utf8_lossy(bytes)).into_bytes();
    };
    match norm {
        Norm::Exact => {}
        Norm::ExitOnly => {
            o.stdout.clear();
        }
        // Every run of digits becomes one 9: 0.000123 and 12.345678 are both "9.9".
        Norm::Numbers => fix(&mut o.stdout, &|s| {
            let mut out = String::new();
            for c in s.chars() {
                if c.is_ascii_digit() {
                    if !out.ends_with('9') {
                        out.push('9');
                    }
                } else {
                    out.push(c);
                }
            }
            out
        }),
        Norm::Json => {
            let mut v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap_or_default();
            if let Some(map) = v.as_object_mut() {
                map.retain(|k, _| {
                    !(k.starts_with("time_")
                        || k.starts_with("speed_")
                        || k == "local_port"
                        || k == "size_request"
                        || k == "curl_version")
                });
            }
            o.stdout = v.to_string().into_bytes();
        }
        Norm::Date => {
            let strip = |s: &str| {
                s.split_inclusive('\n')
                    .filter(|l| !l.starts_with("Date:"))
                    .collect::<String>()
            };
            fix(&mut o.stdout, &strip);
            for v in o.files.values_mut() {
                fix(v, &strip);
            }
        }
    }
}

/// The command lines; `ca` is the test CA that signed nginx's https certificate.
fn cases(ca: &str) -> Vec<Case> {
    let e = format!("http://{SERVER_IP}:{HTTP_ECHO_PORT}");
    let x = |path: &str| format!("{e}{path}");
    let echo = x("/echo");
    let nginx = "http://example.com/index.html";
    let owned: Vec<(Vec<String>, Norm, Vec<u8>)> = vec![
        // Plain requests and -H: replace, remove, empty, ignore.
        (vec![echo.clone()], Norm::Exact, vec![]),
        (
            vec![
                "-H".into(),
                "Host: example.com".into(),
                "-H".into(),
                "Accept:".into(),
                "-H".into(),
                "X-Empty;".into(),
                "-H".into(),
                "no colon here".into(),
                "-H".into(),
                "X-A: b".into(),
                echo.clone(),
            ],
            Norm::Exact,
            vec![],
        ),
        (
            vec!["-H".into(), "Accept: x/y".into(), echo.clone()],
            Norm::Exact,
            vec![],
        ),
        (vec!["-A".into(), "".into(), echo.clone()], Norm::Exact, vec![]),
        (vec!["-H".into(), "@headers.txt".into(), echo.clone()], Norm::Exact, vec![]),
        (
            vec!["-A".into(), "custom/1".into(), echo.clone()],
            Norm::Exact,
            vec![],
        ),
        // Bodies.
        (
            vec!["-d".into(), "a=1".into(), "-d".into(), "b=2".into(), echo.clone()],
            Norm::Exact,
            vec![],
        ),
        (vec!["-d".into(), "@crlf.txt".into(), echo.clone()], Norm::Exact, vec![]),
        (
            vec![
                "-d".into(),
                "a=1".into(),
                "--data-binary".into(),
                "@crlf.txt".into(),
                "--data-urlencode".into(),
                "u=x y".into(),
                "-d".into(),
                "b=2".into(),
                echo.clone(),
            ],
            Norm::Exact,
            vec![],
        ),
        (
            vec!["-d".into(), "@-".into(), echo.clone()],
            Norm::Exact,
            b"from\r\nstdin\n".to_vec(),
        ),
        (
            vec!["--data-binary".into(), "@crlf.txt".into(), echo.clone()],
            Norm::Exact,
            vec![],
        ),
        (
            vec!["--data-binary".into(), "@big.txt".into(), echo.clone()],
            Norm::Exact,
            vec![],
        ),
        (
            vec![
                "-H".into(),
                "Expect:".into(),
                "--data-binary".into(),
                "@big.txt".into(),
                "-w".into(),
                "%{http_code} %{size_upload}\\n".into(),
                "-o".into(),
                "/dev/null".into(),
                echo.clone(),
            ],
            Norm::Exact,
            vec![],
        ),
        (
            vec!["--data-raw".into(), "@notafile".into(), echo.clone()],
            Norm::Exact,
            vec![],
        ),
        (
            vec![
                "--data-urlencode".into(),
                "n=a b&c/é".into(),
                "--data-urlencode".into(),
                "=x y".into(),
                "--data-urlencode".into(),
                "f@a.txt".into(),
                echo.clone(),
            ],
            Norm::Exact,
            vec![],
        ),
        (
            vec![
                "--json".into(),
                "{\"a\":1}".into(),
                "--json".into(),
                "[2]".into(),
                echo.clone(),
            ],
            Norm::Exact,
            vec![],
        ),
        (
            vec!["-G".into(), "-d".into(), "a=b".into(), "-d".into(), "c=d".into(), x("/echo?q=1")],
            Norm::Exact,
            vec![],
        ),
        (
            vec!["-X".into(), "PUT".into(), "-d".into(), "put body".into(), echo.clone()],
            Norm::Exact,
            vec![],
        ),
        (
            vec![
                "-F".into(),
                "a=1".into(),
                "-F".into(),
                "f=@a.txt".into(),
                "-F".into(),
                "g=<a.txt".into(),
                "-F".into(),
                "h=@a.txt;type=x/y;filename=z.bin".into(),
                "--form-string".into(),
                "s=@literal".into(),
                echo.clone(),
            ],
            Norm::Exact,
            vec![],
        ),
        (vec!["-F".into(), "f=@missing.bin".into(), echo.clone()], Norm::Exact, vec![]),
        // Credentials, referer, cookies.
        (
            vec![format!("http://u%40x:p%3Aw@{SERVER_IP}:{HTTP_ECHO_PORT}/echo")],
            Norm::Exact,
            vec![],
        ),
        (vec!["-u".into(), "user:pw".into(), echo.clone()], Norm::Exact, vec![]),
        (
            vec!["-e".into(), "http://ref.example/".into(), echo.clone()],
            Norm::Exact,
            vec![],
        ),
        (vec!["-b".into(), "c=1; d=2".into(), echo.clone()], Norm::Exact, vec![]),
        (vec!["-b".into(), "cookies.txt".into(), echo.clone()], Norm::Exact, vec![]),
        (
            vec![
                "-c".into(),
                "jar.txt".into(),
                x("/cookies/set?a=1&b=2"),
                echo.clone(),
            ],
            Norm::Exact,
            vec![],
        ),
        (
            vec!["-c".into(), "-".into(), "-o".into(), "/dev/null".into(), x("/cookies/set?z=9")],
            Norm::Exact,
            vec![],
        ),
        // Ranges, resume, remote names.
        (vec!["-r".into(), "0-9".into(), nginx.into()], Norm::Exact, vec![]),
        (
            vec!["-C".into(), "-".into(), "-o".into(), "part.html".into(), nginx.into()],
            Norm::Exact,
            vec![],
        ),
        (vec!["-C".into(), "100".into(), nginx.into()], Norm::Exact, vec![]),
        (
            vec!["-C".into(), "-".into(), "-o".into(), "full.html".into(), nginx.into()],
            Norm::Exact,
            vec![],
        ),
        (vec!["-O".into(), nginx.into()], Norm::Exact, vec![]),
        (
            vec!["-O".into(), nginx.into(), "-o".into(), "second.txt".into(), x("/file/f.txt")],
            Norm::Exact,
            vec![],
        ),
        (
            vec!["--remote-name-all".into(), nginx.into(), x("/file/f.txt")],
            Norm::Exact,
            vec![],
        ),
        (
            vec!["-O".into(), "-J".into(), x("/disposition/dl.txt")],
            Norm::Exact,
            vec![],
        ),
        (vec!["-O".into(), "http://example.com/".into()], Norm::Exact, vec![]),
        (
            vec!["-o".into(), "sub/dir/out.html".into(), "--create-dirs".into(), nginx.into()],
            Norm::Exact,
            vec![],
        ),
        // Content codings.
        (vec!["--compressed".into(), x("/file/gz.txt")], Norm::Exact, vec![]),
        (vec!["--compressed".into(), x("/file/zz.txt")], Norm::Exact, vec![]),
        (vec!["--compressed".into(), x("/file/br.txt")], Norm::Exact, vec![]),
        (vec!["--compressed".into(), x("/file/zs.txt")], Norm::Exact, vec![]),
        (vec!["--compressed".into(), echo.clone()], Norm::Exact, vec![]),
        (vec![x("/file/gz.txt")], Norm::Exact, vec![]),
        (
            vec![
                "--compressed".into(),
                "-w".into(),
                "%{size_download} %{size_header}".into(),
                "-o".into(),
                "o.txt".into(),
                x("/file/gz.txt"),
            ],
            Norm::Exact,
            vec![],
        ),
        // Headers out: -D, -i, -I, per hop with -L.
        (vec!["-D".into(), "hdr.txt".into(), echo.clone()], Norm::Exact, vec![]),
        (vec!["-D".into(), "-".into(), echo.clone()], Norm::Exact, vec![]),
        (vec!["-i".into(), echo.clone()], Norm::Exact, vec![]),
        (vec!["-I".into(), echo.clone()], Norm::Exact, vec![]),
        (vec!["-i".into(), nginx.into()], Norm::Date, vec![]),
        (
            vec![
                "-i".into(),
                "-L".into(),
                "-d".into(),
                "x=1".into(),
                x("/redirect/302?to=/redirect/307"),
            ],
            Norm::Exact,
            vec![],
        ),
        (
            vec!["-L".into(), "-d".into(), "x=1".into(), x("/redirect/303")],
            Norm::Exact,
            vec![],
        ),
        (
            vec!["-L".into(), "-d".into(), "x=1".into(), x("/redirect/307")],
            Norm::Exact,
            vec![],
        ),
        (
            vec!["-L".into(), "--json".into(), "{}".into(), x("/redirect/308")],
            Norm::Exact,
            vec![],
        ),
        (vec!["-I".into(), "-L".into(), x("/redirect/301")], Norm::Exact, vec![]),
        (
            vec!["-D".into(), "hops.txt".into(), "-L".into(), x("/redirect/302")],
            Norm::Exact,
            vec![],
        ),
        (vec![x("/redirect/302")], Norm::Exact, vec![]),
        (
            vec![
                "-L".into(),
                "--max-redirs".into(),
                "2".into(),
                x("/redirect/302?to=/redirect/302"),
            ],
            Norm::Exact,
            vec![],
        ),
        // Errors and retries.
        (vec!["-fi".into(), x("/status/404")], Norm::Exact, vec![]),
        (vec!["-f".into(), x("/status/500")], Norm::Exact, vec![]),
        (vec!["-f".into(), "-o".into(), "nofile".into(), x("/status/404")], Norm::Exact, vec![]),
        (vec![x("/status/404")], Norm::Exact, vec![]),
        (
            vec!["--retry".into(), "1".into(), "--retry-delay".into(), "1".into(), x("/status/503")],
            Norm::Exact,
            vec![],
        ),
        (
            vec![
                "--retry".into(),
                "2".into(),
                "-f".into(),
                "-w".into(),
                "%{http_code}\\n".into(),
                x("/retry-after"),
            ],
            Norm::Exact,
            vec![],
        ),
        (
            vec![
                "--retry".into(),
                "3".into(),
                "--retry-delay".into(),
                "2".into(),
                "--retry-max-time".into(),
                "1".into(),
                x("/status/503"),
            ],
            Norm::Exact,
            vec![],
        ),
        (vec!["-m".into(), "1".into(), x("/slow")], Norm::Exact, vec![]),
        (vec!["--resolve".into(), "bad-entry".into(), echo.clone()], Norm::Exact, vec![]),
        (
            vec![
                "--resolve".into(),
                format!("example.com:80:{SERVER_IP}"),
                nginx.into(),
            ],
            Norm::Exact,
            vec![],
        ),
        (
            vec!["-4".into(), "--interface".into(), HOST_IF.into(), nginx.into()],
            Norm::Exact,
            vec![],
        ),
        // -w.
        (
            vec![
                "-s".into(),
                "-o".into(),
                "body.txt".into(),
                "-L".into(),
                "-w".into(),
                "%{http_code} %{size_download} %{url_effective} %{num_redirects} %{content_type} %{remote_ip} %{remote_port} %{exitcode} [%{errormsg}] %{method} %{filename_effective}\\n".into(),
                x("/redirect/302"),
            ],
            Norm::Exact,
            vec![],
        ),
        (
            vec!["-w".into(), "%{header_json}".into(), "-o".into(), "o.txt".into(), echo.clone()],
            Norm::Exact,
            vec![],
        ),
        (vec!["-s".into(), "-w".into(), "%{json}".into(), "-o".into(), "o.txt".into(), echo.clone()], Norm::Json, vec![]),
        (
            vec![
                "-w".into(),
                "%{time_total} %{time_connect} %{time_starttransfer} %{speed_download}\\n".into(),
                "-o".into(),
                "o.txt".into(),
                echo.clone(),
            ],
            Norm::Numbers,
            vec![],
        ),
        (
            vec![
                "-f".into(),
                "-w".into(),
                "%{http_code} %{exitcode} %{errormsg}\\n".into(),
                x("/status/404"),
            ],
            Norm::Exact,
            vec![],
        ),
        (vec!["-w".into(), "@fmt.txt".into(), echo.clone()], Norm::Exact, vec![]),
        (
            vec!["-w".into(), "%{http_code} %{exitcode}\\n".into(), "http://nosuchhost.invalid/".into()],
            Norm::Exact,
            vec![],
        ),
        // Several URLs, keep-alive, -Z, -#, -V.
        (
            vec![echo.clone(), x("/chunked"), x("/close"), nginx.into()],
            Norm::Exact,
            vec![],
        ),
        (
            vec![
                "-o".into(),
                "one.txt".into(),
                "-o".into(),
                "two.txt".into(),
                echo.clone(),
                x("/chunked"),
                nginx.into(),
            ],
            Norm::Exact,
            vec![],
        ),
        (
            vec![
                "-Z".into(),
                "-o".into(),
                "a.out".into(),
                "-o".into(),
                "b.out".into(),
                echo.clone(),
                nginx.into(),
            ],
            Norm::Exact,
            vec![],
        ),
        // -Z to one host: the others wait for the first answer (curl's pipewait), then
        // the quick one finishes (and is written) before the slow one.
        (
            vec!["-Z".into(), x("/delay/1"), x("/delay/1"), echo.clone()],
            Norm::Exact,
            vec![],
        ),
        (
            vec!["-#".into(), "-o".into(), "bar.txt".into(), echo.clone()],
            Norm::Exact,
            vec![],
        ),
        (vec!["-V".into()], Norm::ExitOnly, vec![]),
        (vec!["-o".into(), "bin.dat".into(), x("/file/bin.dat")], Norm::Exact, vec![]),
        (vec!["--url".into(), echo.clone()], Norm::Exact, vec![]),
        (
            vec!["--url".into(), x("/echo?first"), x("/echo?second")],
            Norm::Exact,
            vec![],
        ),
        // -z: a date, a file's time, -DATE, no such file; a 304 and a document that is
        // not new enough make no output and no file.
        (
            vec![
                "-z".into(),
                "Mon, 01 Jan 2001 00:00:00 GMT".into(),
                "-o".into(),
                "c1".into(),
                x("/conditional"),
            ],
            Norm::Exact,
            vec![],
        ),
        (vec!["-z".into(), "a.txt".into(), echo.clone()], Norm::Exact, vec![]),
        (
            vec!["-z".into(), "-Sat, 01 Jan 2000 00:00:00 GMT".into(), echo.clone()],
            Norm::Exact,
            vec![],
        ),
        (vec!["-z".into(), "nonexist.txt".into(), echo.clone()], Norm::Exact, vec![]),
        (
            vec![
                "-z".into(),
                "Sat, 01 Jan 2050 00:00:00 GMT".into(),
                "-o".into(),
                "new.html".into(),
                nginx.into(),
            ],
            Norm::Exact,
            vec![],
        ),
        (
            vec!["-z".into(), "Sat, 01 Jan 2000 00:00:00 GMT".into(), nginx.into()],
            Norm::Exact,
            vec![],
        ),
        // https through rustls: a CA file, -k, an unknown CA, a missing CA file, and two
        // URLs on one kept-alive TLS connection.
        (
            vec!["--cacert".into(), ca.into(), "https://example.com/index.html".into()],
            Norm::Exact,
            vec![],
        ),
        (
            vec![
                "-k".into(),
                "-w".into(),
                "%{http_code} %{scheme} %{remote_port}\\n".into(),
                "-o".into(),
                "tls.html".into(),
                "https://example.com/index.html".into(),
            ],
            Norm::Exact,
            vec![],
        ),
        (vec!["https://example.com/".into()], Norm::Exact, vec![]),
        (
            vec!["--cacert".into(), "/no/such/ca.pem".into(), "https://example.com/".into()],
            Norm::Exact,
            vec![],
        ),
        (
            vec![
                "--cacert".into(),
                ca.into(),
                "https://example.com/index.html".into(),
                "https://example.com/index.html".into(),
            ],
            Norm::Exact,
            vec![],
        ),
        // Uploads and a few more everyday flags.
        (vec!["-T".into(), "a.txt".into(), x("/up/")], Norm::Exact, vec![]),
        (vec!["-T".into(), "a.txt".into(), x("/up/x")], Norm::Exact, vec![]),
        (
            vec!["-T".into(), "-".into(), x("/up/x")],
            Norm::Exact,
            b"stdin upload\n".to_vec(),
        ),
        (vec!["--fail-with-body".into(), x("/status/404")], Norm::Exact, vec![]),
        (
            vec!["--no-progress-meter".into(), "-o".into(), "o.txt".into(), echo.clone()],
            Norm::Exact,
            vec![],
        ),
        (vec!["-N".into(), "--http1.1".into(), echo.clone()], Norm::Exact, vec![]),
        (
            vec![
                "--output-dir".into(),
                "outdir".into(),
                "--create-dirs".into(),
                "-O".into(),
                nginx.into(),
            ],
            Norm::Exact,
            vec![],
        ),
        // Globbing: sets, ranges, #N in -o, -g, and a broken range.
        (vec![x("/echo?n=[1-3]&s={a,b}")], Norm::Exact, vec![]),
        (
            vec!["-o".into(), "g_#1.out".into(), x("/file/{f.txt,gz.txt}")],
            Norm::Exact,
            vec![],
        ),
        (vec!["-g".into(), x("/echo?x=[1]")], Norm::Exact, vec![]),
        (vec![x("/echo/[1-")], Norm::Exact, vec![]),
        // Bad input is refused as curl refuses it (issue 23): a space or CR/LF in the
        // URL (3), a header without a name (dropped), -u without a password (asked
        // for: read from stdin without a terminal, or empty).
        (vec![x("/echo/a b")], Norm::Exact, vec![]),
        (vec![x("/echo/a\r\nX-Injected: 1")], Norm::Exact, vec![]),
        (vec!["-H".into(), ": value".into(), echo.clone()], Norm::Exact, vec![]),
        (vec!["-u".into(), "user".into(), echo.clone()], Norm::Exact, vec![]),
        (vec!["-u".into(), "user".into(), echo.clone()], Norm::Exact, b"secret\n".to_vec()),
        // Flags curl refuses (2), and -1 for no redirect limit.
        (vec!["--bogus".into(), echo.clone()], Norm::Exact, vec![]),
        (vec!["--max-time".into(), "-1".into(), echo.clone()], Norm::Exact, vec![]),
        (vec!["--retry".into(), "-1".into(), echo.clone()], Norm::Exact, vec![]),
        (vec!["-L".into(), "--max-redirs".into(), "-5".into(), x("/redirect/302")], Norm::Exact, vec![]),
        (vec!["-L".into(), "--max-redirs".into(), "-1".into(), x("/redirect/302")], Norm::Exact, vec![]),
        // Broken servers: exit codes as curl's.
        (
            vec!["-L".into(), x("/redirect/302?to=http://example.com:99999/")],
            Norm::Exact,
            vec![],
        ),
        (vec![x("/redirect/302?to=http://example.com:99999/")], Norm::Exact, vec![]),
        (vec![x("/broken/garbage")], Norm::Exact, vec![]),
        (vec![x("/broken/badver")], Norm::Exact, vec![]),
        (vec!["-o".into(), "h.out".into(), x("/broken/many-headers")], Norm::Exact, vec![]),
        (vec!["-o".into(), "h.out".into(), x("/broken/huge-header")], Norm::Exact, vec![]),
        (vec![x("/broken/two-lengths")], Norm::Exact, vec![]),
        // Cookies for other sites and for public suffixes are not kept (RFC 6265
        // 5.3 steps 5 and 6), a parent domain of the host is.
        (
            vec![
                "-c".into(),
                "jar.txt".into(),
                "--resolve".into(),
                format!("other.example:{HTTP_ECHO_PORT}:{SERVER_IP}"),
                format!("http://www.example.com:{HTTP_ECHO_PORT}/cookies/domain?d=other.example"),
                format!("http://www.example.com:{HTTP_ECHO_PORT}/cookies/domain?d=com"),
                format!("http://www.example.com:{HTTP_ECHO_PORT}/cookies/domain?d=.example.com"),
                format!("http://other.example:{HTTP_ECHO_PORT}/echo"),
                format!("http://example.com:{HTTP_ECHO_PORT}/echo"),
            ],
            Norm::Exact,
            vec![],
        ),
        (
            vec!["-c".into(), "jar.txt".into(), x("/cookies/domain?d=example.com")],
            Norm::Exact,
            vec![],
        ),
    ];
    owned
        .into_iter()
        .map(|(args, norm, stdin)| Case {
            args,
            stdin,
            norm,
            env: Vec::new(),
        })
        .collect()
}

/// Runs every case through both curls; the differences, one block each.
fn differences(w: &World, all: &[Case], name: &str) -> Vec<String> {
    let base = w.dir.join(name);
    let (theirs_dir, ours_dir): (PathBuf, PathBuf) = (base.join("curl"), base.join("ours"));
    let mut failures = Vec::new();
    for c in all {
        eprintln!("{:?} curl {:?}", c.env, c.args);
        let theirs = run_case(w, &theirs_dir, false, c);
        let ours = run_case(w, &ours_dir, true, c);
        if theirs != ours {
            failures.push(format!(
                "{:?} curl {:?}\n  curl: {:?} {:?} {:?}\n  ours: {:?} {:?} {:?}",
                c.env,
                c.args,
                theirs.code,
                text(&theirs.stdout),
                theirs.files.keys().collect::<Vec<_>>(),
                ours.code,
                text(&ours.stdout),
                ours.files.keys().collect::<Vec<_>>(),
            ));
            for (name, data) in &theirs.files {
                if ours.files.get(name) != Some(data) {
                    failures.push(format!(
                        "    file {name}: curl {:?} ours {:?}",
                        text(data),
                        ours.files.get(name).map(|d| text(d))
                    ));
                }
            }
        }
    }
    failures
}

#[test]
fn curl_diff_command_lines_match_the_real_curl() {
    let w = world(WorldOptions {
        nginx: true,
        dnsmasq: true,
        http_echo: true,
        tls: true,
        ..Default::default()
    });
    echo_files(&w);
    let all = cases(&w.dir.join("ca.pem").display().to_string());
    assert!(all.len() >= 40, "{} command lines", all.len());
    let failures = differences(&w, &all, "diff");
    eprintln!(
        "{} of {} command lines match the real curl",
        all.len() - failures.iter().filter(|f| f.starts_with('[')).count(),
        all.len()
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// The proxy port of tinyproxy in the server namespace.
const PROXY_PORT: u16 = 8888;

/// -x, the proxy environment and --noproxy through a real proxy (tinyproxy: plain
/// http forwarded, https through CONNECT, CONNECT refused to other ports than 443),
/// and through the echo server acting as a proxy, which shows the request as sent.
/// --limit-rate gives the same bytes.
#[test]
fn curl_proxies_and_limit_rate_match_the_real_curl() {
    let w = world(WorldOptions {
        nginx: true,
        dnsmasq: true,
        http_echo: true,
        tls: true,
        big_file: Some(300 * 1024),
        ..Default::default()
    });
    let conf = w.dir.join("tinyproxy.conf");
    std::fs::write(
        &conf,
        format!(
            "Port {PROXY_PORT}\nListen {SERVER_IP}\nTimeout 30\nMaxClients 20\nDisableViaHeader Yes\nLogLevel Critical\nConnectPort 443\n"
        ),
    )
    .unwrap();
    let mut w = w;
    let proxy_child = w
        .spawn(
            &w.server.clone(),
            &["tinyproxy", "-d", "-c", conf.to_str().unwrap()],
        )
        .unwrap();
    w.adopt(proxy_child);
    w.wait_for_port(&w.server.clone(), SERVER_IP, PROXY_PORT, false)
        .unwrap();
    let tiny = format!("http://{SERVER_IP}:{PROXY_PORT}");
    let echo_proxy = format!("{SERVER_IP}:{HTTP_ECHO_PORT}");
    let echo = format!("http://{SERVER_IP}:{HTTP_ECHO_PORT}/echo");
    let tls_page = format!("https://{SERVER_IP}/index.html");
    let dead = format!("http://{SERVER_IP}:9");
    let s = |v: &[&str]| v.iter().map(|a| a.to_string()).collect::<Vec<_>>();
    let case = |args: Vec<String>, env: Vec<(&'static str, String)>| Case {
        args,
        stdin: Vec::new(),
        norm: Norm::Exact,
        env,
    };
    let all = vec![
        // The echo server as the proxy: the absolute URL, Proxy-Connection and
        // Proxy-Authorization in curl's order.
        case(
            s(&["-x", &echo_proxy, "http://example.com/echo?q=1"]),
            vec![],
        ),
        case(
            s(&[
                "-x",
                &format!("u:p@{echo_proxy}"),
                "-u",
                "a:b",
                "-e",
                "r",
                "-b",
                "c=1",
                "http://example.com:81/echo",
            ]),
            vec![],
        ),
        case(
            s(&["-x", &echo_proxy, "-U", "pu:pp", "http://example.com/echo"]),
            vec![],
        ),
        // tinyproxy: plain http, https through CONNECT, a refused CONNECT (56).
        case(s(&["-x", &tiny, &echo]), vec![]),
        case(
            s(&["-x", &format!("{SERVER_IP}:{PROXY_PORT}"), "-k", &tls_page]),
            vec![],
        ),
        case(
            s(&[
                "-x",
                &tiny,
                "-k",
                &format!("https://{SERVER_IP}:{HTTP_ECHO_PORT}/"),
            ]),
            vec![],
        ),
        // The environment, and what bypasses it.
        case(s(&[&echo]), vec![("http_proxy", tiny.clone())]),
        case(s(&["-k", &tls_page]), vec![("https_proxy", tiny.clone())]),
        case(s(&["-k", &tls_page]), vec![("HTTPS_PROXY", tiny.clone())]),
        case(s(&[&echo]), vec![("all_proxy", tiny.clone())]),
        case(
            s(&[&echo]),
            vec![
                ("http_proxy", dead.clone()),
                ("no_proxy", SERVER_IP.to_string()),
            ],
        ),
        case(
            s(&[&echo]),
            vec![
                ("http_proxy", dead.clone()),
                ("no_proxy", "10.77.0.0/16".into()),
            ],
        ),
        case(s(&["--noproxy", "*", "-x", &dead, &echo]), vec![]),
        case(s(&["-x", "", &echo]), vec![("http_proxy", dead.clone())]),
        case(s(&["-x", &dead, &echo]), vec![]),
        // A dead proxy for https, and a proxy name that does not resolve (5).
        case(s(&["-k", &tls_page]), vec![("https_proxy", dead.clone())]),
        case(s(&["-x", "http://nosuchproxy.invalid:3128", &echo]), vec![]),
        // --limit-rate: the same bytes, paced.
        case(
            s(&[
                "--limit-rate",
                "1M",
                "-o",
                "big.out",
                &format!("http://{SERVER_IP}/big.bin"),
            ]),
            vec![],
        ),
        case(s(&["--limit-rate", "10Q", &echo]), vec![]),
    ];
    let failures = differences(&w, &all, "proxy");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// The real curl in the server namespace against `serve` on the stack.
fn kernel_curl(w: &World, args: &[&str]) -> (Option<i32>, String) {
    let mut argv = vec!["curl", "-s", "--max-time", "10"];
    argv.extend_from_slice(args);
    let out = run_in(w, &w.server, &argv);
    (out.status.code(), text(&out.stdout))
}

fn header_value(head: &str, name: &str) -> Option<String> {
    head.lines().find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.eq_ignore_ascii_case(name).then(|| v.trim().to_string())
    })
}

#[test]
fn serve_ranges_conditionals_redirects_listing_and_types_with_the_real_curl() {
    let w = world(WorldOptions::default());
    let root = w.dir.join("site");
    std::fs::create_dir_all(root.join("sub/deeper")).unwrap();
    let hundred: String = (0..100)
        .map(|i| char::from(b'a' + (i % 26) as u8))
        .collect();
    std::fs::write(root.join("a.txt"), &hundred).unwrap();
    std::fs::write(root.join("index.html"), "<p>home</p>\n").unwrap();
    std::fs::write(root.join("app.wasm"), b"\0asm").unwrap();
    std::fs::write(root.join("pic.svg"), "<svg/>").unwrap();
    std::fs::write(root.join("sub/b.txt"), "b\n").unwrap();
    let root_arg = root.display().to_string();
    let server = start_serve(
        &w,
        &["--root", &root_arg, "--list", "--port", "8080", "--stats"],
    );
    let base = format!("http://{HOST_IP}:8080");
    let url = |p: &str| format!("{base}{p}");

    // A range, a suffix range, and one past the end.
    let (code, head) = kernel_curl(
        &w,
        &["-D", "-", "-o", "/dev/null", "-r", "0-9", &url("/a.txt")],
    );
    assert_eq!(code, Some(0));
    assert!(head.starts_with("HTTP/1.1 206"), "{head}");
    assert_eq!(
        header_value(&head, "content-range").as_deref(),
        Some("bytes 0-9/100")
    );
    assert_eq!(
        kernel_curl(&w, &["-r", "0-9", &url("/a.txt")]).1,
        hundred[..10]
    );
    assert_eq!(
        kernel_curl(&w, &["-r", "-5", &url("/a.txt")]).1,
        hundred[95..]
    );
    let (_, head) = kernel_curl(
        &w,
        &["-D", "-", "-o", "/dev/null", "-r", "200-", &url("/a.txt")],
    );
    assert!(head.starts_with("HTTP/1.1 416"), "{head}");
    assert_eq!(
        header_value(&head, "content-range").as_deref(),
        Some("bytes */100")
    );
    // curl -C - completes a partial file byte for byte.
    let part = w.dir.join("partial.txt");
    std::fs::write(&part, &hundred[..42]).unwrap();
    let part_arg = part.display().to_string();
    assert_eq!(
        kernel_curl(&w, &["-C", "-", "-o", &part_arg, &url("/a.txt")]).0,
        Some(0)
    );
    assert_eq!(std::fs::read_to_string(&part).unwrap(), hundred);

    // Validators, 304s and If-Range.
    let (_, head) = kernel_curl(&w, &["-I", &url("/a.txt")]);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let etag = header_value(&head, "etag").expect("ETag");
    let modified = header_value(&head, "last-modified").expect("Last-Modified");
    assert!(header_value(&head, "date").is_some(), "{head}");
    assert_eq!(
        header_value(&head, "content-length").as_deref(),
        Some("100")
    );
    let code_of = |extra: &[&str]| {
        let mut args = vec!["-o", "/dev/null", "-w", "%{http_code}"];
        args.extend_from_slice(extra);
        let a = url("/a.txt");
        args.push(&a);
        kernel_curl(&w, &args).1
    };
    assert_eq!(code_of(&["-H", &format!("If-None-Match: {etag}")]), "304");
    assert_eq!(code_of(&["-H", "If-None-Match: \"other\""]), "200");
    assert_eq!(
        code_of(&["-H", &format!("If-Modified-Since: {modified}")]),
        "304"
    );
    assert_eq!(code_of(&["-z", "Mon, 01 Jan 2001 00:00:00 GMT"]), "200");
    assert_eq!(
        code_of(&["-r", "0-9", "-H", &format!("If-Range: {etag}")]),
        "206"
    );
    assert_eq!(code_of(&["-r", "0-9", "-H", "If-Range: \"stale\""]), "200");

    // /dir redirects to /dir/; a directory without index.html is listed with --list.
    let (_, head) = kernel_curl(&w, &["-D", "-", "-o", "/dev/null", &url("/sub")]);
    assert!(head.starts_with("HTTP/1.1 301"), "{head}");
    assert_eq!(header_value(&head, "location").as_deref(), Some("/sub/"));
    let (code, page) = kernel_curl(&w, &["-L", "-f", &url("/sub")]);
    assert_eq!(code, Some(0));
    assert!(
        page.contains("href=\"b%2Etxt\">b.txt</a>") && page.contains("deeper/"),
        "{page}"
    );
    assert_eq!(kernel_curl(&w, &["-L", &url("/")]).1, "<p>home</p>\n");

    // Types from mime_guess.
    for (path, want) in [
        ("/app.wasm", "application/wasm"),
        ("/pic.svg", "image/svg+xml"),
        ("/a.txt", "text/plain; charset=utf-8"),
    ] {
        assert_eq!(
            kernel_curl(
                &w,
                &["-o", "/dev/null", "-w", "%{content_type}", &url(path)]
            )
            .1,
            want
        );
    }
    let (status, lines) = server.stop("-INT");
    assert!(status.success(), "{status:?} {lines:?}");
    // --stats: the shutdown line and the final counters count the same connections
    // (the stack's), and none opens during the shutdown.
    let number_after = |prefix: &str| {
        lines.iter().find_map(|l| {
            let rest = &l[l.find(prefix)? + prefix.len()..];
            rest.trim_start()
                .split(|c: char| !c.is_ascii_digit())
                .next()?
                .parse::<usize>()
                .ok()
        })
    };
    let at_shutdown = number_after("shutting down:").expect("a shutdown line");
    let at_exit = number_after("open now:").expect("the connection counters");
    assert!(at_exit <= at_shutdown, "{lines:?}");

    // --port 0 picks a free port and says which in its ready line.
    let mut child = w
        .exec(&w.host)
        .args([BIN, "serve", "--root", &root_arg, "--port", "0"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(child.stderr.take().unwrap()));
    let ready = lines
        .find_map(|l| l.ok().filter(|l| l.starts_with("ready:")))
        .expect("a ready line");
    let port = ready
        .split_whitespace()
        .find_map(|word| word.strip_prefix(&format!("{HOST_IP}:")))
        .and_then(|p| p.parse::<u16>().ok())
        .unwrap_or_else(|| panic!("no port in {ready:?}"));
    assert_ne!(port, 0);
    let (code, body) = kernel_curl(&w, &[&format!("http://{HOST_IP}:{port}/index.html")]);
    assert_eq!((code, body.as_str()), (Some(0), "<p>home</p>\n"));
    std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    wait_timeout(&mut child, std::time::Duration::from_secs(15));
}

#[test]
fn curl_ctrl_c_kills_by_sigint_and_detaches_xdp() {
    use std::os::unix::process::ExitStatusExt;
    let w = world(WorldOptions {
        http_echo: true,
        ..Default::default()
    });
    let url = format!("http://{SERVER_IP}:{HTTP_ECHO_PORT}/slow");
    let mut child = w
        .exec(&w.host)
        .args([BIN, "curl", "-s", &url])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1500));
    assert!(xdp_attached(&w), "attached during the transfer");
    let pid = child.id().to_string();
    std::process::Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .unwrap();
    let status = wait_timeout(&mut child, std::time::Duration::from_secs(10));
    assert_eq!(status.signal(), Some(libc::SIGINT), "{status:?}");
    // Its holder keeps the program for the next curl, then detaches (1.5 s linger).
    assert!(
        xdp_detached_within(&w, std::time::Duration::from_secs(5)),
        "XDP program left attached"
    );
}

#[test]
fn curl_meter_verbose_keep_alive_and_no_connection_close() {
    let w = world(WorldOptions {
        http_echo: true,
        ..Default::default()
    });
    let echo = format!("http://{SERVER_IP}:{HTTP_ECHO_PORT}/echo");
    let out_file = w.dir.join("out.txt").display().to_string();
    // -o without -s: curl's meter on stderr, even though stderr is a pipe here.
    let out = curl(&w, &["-o", &out_file, &echo]);
    assert!(out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains(
            "% Total    % Received % Xferd  Average Speed   Time    Time     Time  Current"
        ) && err.contains("Dload  Upload   Total   Spent    Left  Speed"),
        "{err}"
    );
    // -v: no Connection: close we were not asked for; the second URL reuses the
    // connection.
    let out = curl(&w, &["-sv", &echo, &echo]);
    assert!(out.status.success());
    let err = text(&out.stderr);
    assert!(err.contains("> GET /echo HTTP/1.1"), "{err}");
    assert!(
        !err.to_ascii_lowercase().contains("connection: close"),
        "{err}"
    );
    assert!(err.contains("Re-using existing connection"), "{err}");
    assert_eq!(text(&out.stdout).matches("GET /echo").count(), 2);
}

#[test]
fn curl_parallel_runs_transfers_at_once_on_one_stack() {
    let w = world(WorldOptions {
        http_echo: true,
        ..Default::default()
    });
    let dir = w.dir.join("parallel");
    std::fs::create_dir_all(&dir).unwrap();
    let urls: Vec<String> = (0..4)
        .map(|i| format!("http://{SERVER_IP}:{HTTP_ECHO_PORT}/delay/1?n={i}"))
        .collect();
    let mut args: Vec<String> = vec!["-sZ".into()];
    for (i, u) in urls.iter().enumerate() {
        args.push("-o".into());
        args.push(dir.join(format!("{i}.txt")).display().to_string());
        args.push(u.clone());
    }
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let start = std::time::Instant::now();
    let out = curl(&w, &argv);
    let took = start.elapsed();
    assert!(out.status.success(), "{}", text(&out.stderr));
    // Four one-second answers: the first alone (curl waits for a first answer from a
    // host before it opens more connections to it), then three at once: two seconds,
    // not four.
    assert!(took < std::time::Duration::from_millis(3000), "{took:?}");
    for i in 0..4 {
        let body = std::fs::read_to_string(dir.join(format!("{i}.txt"))).unwrap();
        assert!(
            body.starts_with(&format!("GET /delay/1?n={i} HTTP/1.1")),
            "{body}"
        );
    }
    // Without -s, curl's one meter for all the transfers.
    let argv: Vec<&str> = std::iter::once("-Z")
        .chain(args[1..].iter().map(String::as_str))
        .collect();
    let out = curl(&w, &argv);
    assert!(out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.starts_with("DL% UL%  Dled  Uled  Xfers  Live Total     Current  Left    Speed\n"),
        "{err}"
    );
    assert!(err.ends_with('\n') && err.contains("    4     0 "), "{err}");
}

#[test]
fn curl_binary_output_to_a_terminal_is_refused_with_curls_warning() {
    let w = world(WorldOptions {
        http_echo: true,
        ..Default::default()
    });
    echo_files(&w);
    let url = format!("http://{SERVER_IP}:{HTTP_ECHO_PORT}/file/bin.dat");
    // `script` gives the command a terminal for its stdout; its own exit code is the
    // command's.
    let run = |program: &str| {
        let line = format!("{program} curl {url}; echo \"exit=$?\"");
        let out = run_in(&w, &w.host, &["script", "-qec", &line, "/dev/null"]);
        text(&out.stdout)
    };
    let theirs = run("");
    let ours = run(BIN);
    for out in [&theirs, &ours] {
        assert!(
            out.contains("Binary output can mess up your terminal"),
            "{out}"
        );
        assert!(out.contains("exit=23"), "{out}");
    }
}

#[test]
fn curl_remote_time_sets_the_files_time_as_curl_does() {
    let w = world(WorldOptions {
        nginx: true,
        ..Default::default()
    });
    let url = format!("http://{SERVER_IP}/index.html");
    let mtime = |path: &Path| std::fs::metadata(path).unwrap().modified().unwrap();
    let theirs = w.dir.join("theirs.html");
    let ours = w.dir.join("ours.html");
    let out = run_in(
        &w,
        &w.host,
        &["curl", "-sR", "-o", theirs.to_str().unwrap(), &url],
    );
    assert!(out.status.success());
    let out = curl(&w, &["-sR", "-o", ours.to_str().unwrap(), &url]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(mtime(&ours), mtime(&theirs));
    assert_ne!(
        mtime(&ours),
        std::fs::metadata(w.dir.join("nginx.conf"))
            .unwrap()
            .modified()
            .unwrap(),
        "the time is the server's, not a fresh one"
    );
}

/// Flags curl cannot take: its two lines on stderr, word for word, and exit 2. Nothing
/// is fetched (the command line fails first), so no world is needed.
#[test]
fn curl_flag_errors_print_curls_two_lines() {
    for args in [
        &["--bogus", "http://127.0.0.1:9/"][..],
        &["--max-time", "-1", "http://127.0.0.1:9/"],
        &["-m", "abc", "http://127.0.0.1:9/"],
        &["--retry", "-1", "http://127.0.0.1:9/"],
        &["--max-redirs", "-5", "http://127.0.0.1:9/"],
        &["http://127.0.0.1:9/", "-o"],
        &["-s"],
    ] {
        let run = |program: &[&str]| {
            let out = std::process::Command::new(program[0])
                .args(&program[1..])
                .args(args)
                .stdin(Stdio::null())
                .output()
                .unwrap();
            (out.status.code(), text(&out.stdout), text(&out.stderr))
        };
        let theirs = run(&["curl"]);
        let ours = run(&[BIN, "curl"]);
        assert_eq!(ours, theirs, "curl {args:?}");
        assert_eq!(theirs.0, Some(2), "curl {args:?}");
    }
}

/// SIGTERM ends the process by SIGTERM after XDP is detached, and a closed stdout is a
/// write error (23), as with the real curl.
#[test]
fn curl_sigterm_and_closed_stdout_end_as_curls() {
    use std::os::unix::process::ExitStatusExt;
    let w = world(WorldOptions {
        http_echo: true,
        ..Default::default()
    });
    let slow = format!("http://{SERVER_IP}:{HTTP_ECHO_PORT}/slow");
    for ours in [false, true] {
        let mut cmd = w.exec(&w.host);
        if ours {
            cmd.args([BIN, "curl"]);
        } else {
            cmd.arg("curl");
        }
        let mut child = cmd
            .args(["-sN", &slow])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // The transfer is under way once its first bytes are on stdout (-N: at once).
        let mut first = [0u8; 6];
        std::io::Read::read_exact(child.stdout.as_mut().unwrap(), &mut first).unwrap();
        assert_eq!(&first, b"first ");
        if ours {
            assert!(xdp_attached(&w), "attached during the transfer");
        }
        let pid = child.id();
        std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .unwrap();
        let status = wait_timeout(&mut child, std::time::Duration::from_secs(10));
        assert_eq!(
            status.signal(),
            Some(libc::SIGTERM),
            "ours {ours}: {status:?}"
        );
    }
    assert!(
        xdp_detached_within(&w, std::time::Duration::from_secs(5)),
        "XDP program left attached"
    );
    let echo = format!("http://{SERVER_IP}:{HTTP_ECHO_PORT}/echo");
    let closed = |program: &str| {
        let line = format!("{program} curl -s {echo} >&-; echo \"exit=$?\"");
        text(&run_in(&w, &w.host, &["sh", "-c", &line]).stdout)
    };
    assert_eq!(closed(""), "exit=23\n");
    assert_eq!(closed(BIN), "exit=23\n");
}

/// A server that keeps the connection open after a complete answer: the process ends
/// when the transfer does, closing as the kernel closes for an exiting process (a FIN,
/// no wait for the server's), and the server sees that close as an end of stream, not
/// a reset.
#[test]
fn curl_exits_after_the_transfer_when_the_server_keeps_the_connection() {
    let w = world(WorldOptions {
        http_echo: true,
        ..Default::default()
    });
    let hold = format!("http://{SERVER_IP}:{HTTP_ECHO_PORT}/hold");
    let resets = |ns: &str| {
        let out = run_in(
            &w,
            ns,
            &[
                "nstat",
                "-az",
                "TcpExtTCPAbortOnData",
                "TcpEstabResets",
                "TcpInErrs",
            ],
        );
        text(&out.stdout)
            .lines()
            .filter_map(|l| {
                let mut it = l.split_whitespace();
                Some((it.next()?.to_string(), it.next()?.parse::<u64>().ok()?))
            })
            .collect::<Vec<_>>()
    };
    let before = resets(&w.server);
    let mut times = Vec::new();
    for program in [&["curl"][..], &[BIN, "curl"]] {
        let start = std::time::Instant::now();
        let mut argv = program.to_vec();
        argv.extend(["-s", &hold]);
        let out = run_in(&w, &w.host, &argv);
        times.push(start.elapsed());
        assert_eq!(
            out.status.code(),
            Some(0),
            "{program:?}: {}",
            text(&out.stderr)
        );
        assert_eq!(text(&out.stdout), "held\n");
    }
    eprintln!("whole process: curl {:?}, ours {:?}", times[0], times[1]);
    // The server saw both closes as ends of stream: its sockets wait in CLOSE-WAIT for
    // its own close (30 s away), and no reset was counted on its side.
    let out = run_in(
        &w,
        &w.server,
        &[
            "ss",
            "-Htn",
            "state",
            "close-wait",
            "sport",
            "=",
            &format!(":{HTTP_ECHO_PORT}"),
        ],
    );
    assert_eq!(
        text(&out.stdout).lines().count(),
        2,
        "{}",
        text(&out.stdout)
    );
    assert_eq!(resets(&w.server), before);
    // How long each took is the benchmark's business (`cargo xtask bench`, row 'whole
    // process wall, server keeps the connection open'): before, ours waited a second
    // for the server's FIN that the real curl does not wait for.
}
