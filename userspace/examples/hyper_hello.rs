//! `hyper_hello [--iface IF] [--ip ADDR] --port P`: a hyper HTTP/1.1 server on the async
//! [`userspace::net::tokio::TcpListener`]. It answers every request with
//! `hello from userspace\n` until SIGINT or SIGTERM, then detaches. Run it as root.
mod common;
use http_body_util::Full;
use hyper::body::Bytes;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use std::convert::Infallible;
use tokio::signal::unix::{SignalKind, signal};
use userspace::net::tokio::TcpListener;

type Error = Box<dyn std::error::Error + Send + Sync>;

async fn hello(
    _: hyper::Request<hyper::body::Incoming>,
) -> Result<hyper::Response<Full<Bytes>>, Infallible> {
    Ok(hyper::Response::new(Full::new(Bytes::from_static(
        b"hello from userspace\n",
    ))))
}

async fn serve(args: &common::Args, port: u16) -> Result<(), Error> {
    let stack = common::stack(args)?;
    let listener = TcpListener::bind(&stack, ("0.0.0.0", port)).await?;
    eprintln!("ready: hyper_hello on {}", listener.local_addr()?);
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => accepted?,
            _ = interrupt.recv() => break,
            _ = terminate.recv() => break,
        };
        tokio::spawn(async move {
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service_fn(hello))
                .await;
        });
    }
    eprintln!("shutting down");
    drop(listener);
    // Resets what is still open and detaches the XDP program.
    stack.shutdown();
    Ok(())
}

#[tokio::main]
async fn main() {
    let usage = "hyper_hello [--iface IF] [--ip ADDR] --port P";
    let args = common::args(usage);
    let Some(port) = args.port else {
        eprintln!("usage: {usage}");
        std::process::exit(2);
    };
    if let Err(e) = serve(&args, port).await {
        eprintln!("hyper_hello: {e}");
        std::process::exit(1);
    }
}
