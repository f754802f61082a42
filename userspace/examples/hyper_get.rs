//! `hyper_get [--iface IF] [--ip ADDR] URL`: hyper's HTTP/1.1 client over the async
//! [`userspace::net::tokio::TcpStream`], the body to stdout; exit 0 on a 2xx response.
//! Run it as root.
mod common;
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use std::io::Write;
use userspace::net::tokio::TcpStream;

type Error = Box<dyn std::error::Error + Send + Sync>;

async fn get(args: &common::Args, url: &str) -> Result<bool, Error> {
    let (host, port, path) = common::parse_url(url)?;
    let stack = common::stack(args)?;
    let stream = TcpStream::connect(&stack, (host.as_str(), port)).await?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    let driver = tokio::spawn(connection);
    let request = hyper::Request::get(path)
        .header(hyper::header::HOST, common::host_header(&host))
        .header(hyper::header::USER_AGENT, "hyper_get")
        .body(Empty::<Bytes>::new())?;
    let mut response = sender.send_request(request).await?;
    let mut out = std::io::stdout().lock();
    while let Some(frame) = response.body_mut().frame().await {
        if let Some(data) = frame?.data_ref() {
            out.write_all(data)?;
        }
    }
    out.flush()?;
    drop(sender);
    driver.await??;
    Ok(response.status().is_success())
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args = common::args("hyper_get [--iface IF] [--ip ADDR] URL");
    let Some(url) = args.positional.clone() else {
        eprintln!("usage: hyper_get [--iface IF] [--ip ADDR] URL");
        std::process::exit(2);
    };
    match get(&args, &url).await {
        Ok(true) => {}
        Ok(false) => std::process::exit(22),
        Err(e) => {
            eprintln!("hyper_get: {e}");
            std::process::exit(1);
        }
    }
}
