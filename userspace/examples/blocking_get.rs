//! `blocking_get [--iface IF] [--ip ADDR] URL`: an HTTP/1.1 GET over the blocking
//! [`userspace::TcpStream`], the response body to stdout. Run it as root.
mod common;
use std::io::{self, BufRead, BufReader, Write};

fn get(args: &common::Args, url: &str) -> io::Result<()> {
    let (host, port, path) = common::parse_url(url)?;
    let stack = common::stack(args)?;
    let stream = userspace::TcpStream::connect(&stack, (host.as_str(), port))?;
    (&stream).write_all(
        format!(
            "GET {path} HTTP/1.1\r\nHost: {}\r\nUser-Agent: blocking_get\r\nConnection: close\r\n\r\n",
            common::host_header(&host)
        )
        .as_bytes(),
    )?;
    let mut reader = BufReader::with_capacity(256 * 1024, &stream);
    let mut status = String::new();
    reader.read_line(&mut status)?;
    if !status.starts_with("HTTP/1.") {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "not an HTTP response",
        ));
    }
    let mut length = None;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':')
            && name.eq_ignore_ascii_case("content-length")
        {
            length = value.trim().parse::<u64>().ok();
        }
    }
    let mut out = io::stdout().lock();
    // With Content-Length, exactly that many bytes; without, until the server closes.
    // First what the header reader took past the head, then the rest straight from the
    // stack's receive buffer to stdout: `read_with` lends the bytes, no copy of ours.
    let mut left = length.unwrap_or(u64::MAX);
    let early = &reader.buffer()[..reader.buffer().len().min(cap(left))];
    out.write_all(early)?;
    let mut copied = early.len() as u64;
    left -= copied;
    let stream = reader.into_inner();
    while left > 0 {
        let n = stream.read_with(|bytes| out.write(&bytes[..bytes.len().min(cap(left))]))?;
        if n == 0 {
            break;
        }
        copied += n as u64;
        left -= n as u64;
    }
    out.flush()?;
    if length.is_some_and(|n| n != copied) {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "body cut short",
        ));
    }
    if !status
        .split_whitespace()
        .nth(1)
        .is_some_and(|c| c.starts_with('2'))
    {
        return Err(io::Error::other(format!(
            "server said {}",
            status.trim_end()
        )));
    }
    Ok(())
}

/// `n` as a slice length, at most the largest one.
fn cap(n: u64) -> usize {
    usize::try_from(n).unwrap_or(usize::MAX)
}

fn main() {
    let args = common::args("blocking_get [--iface IF] [--ip ADDR] URL");
    let Some(url) = args.positional.clone() else {
        eprintln!("usage: blocking_get [--iface IF] [--ip ADDR] URL");
        std::process::exit(2);
    };
    if let Err(e) = get(&args, &url) {
        eprintln!("blocking_get: {e}");
        std::process::exit(1);
    }
}
