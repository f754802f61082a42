//! `hyper_hello [--iface IF] [--ip ADDR] --port P`: a hyper HTTP/1.1 server on the async
//! [`userspace::net::tokio::TcpListener`]. It answers every request with
//! `hello from userspace\n` until SIGINT or SIGTERM, then detaches. Run it as root.
//! With `--queues N`, one stack per NIC queue (each on its own core) shares the port.
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

/// Accepts on `listener` and serves every connection until the task is aborted.
async fn accept_loop(listener: TcpListener) -> std::io::Result<()> {
    loop {
        let (stream, _) = listener.accept().await?;
        tokio::spawn(async move {
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service_fn(hello))
                .await;
        });
    }
}

async fn serve(args: &common::Args, port: u16) -> Result<(), Error> {
    let stacks = common::stacks(args)?;
    let mut accepting = tokio::task::JoinSet::new();
    for stack in &stacks {
        let listener = TcpListener::bind(stack, ("0.0.0.0", port)).await?;
        eprintln!("ready: hyper_hello on {}", listener.local_addr()?);
        accepting.spawn(accept_loop(listener));
    }
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    tokio::select! {
        Some(Ok(Err(e))) = accepting.join_next() => return Err(e.into()),
        _ = interrupt.recv() => {}
        _ = terminate.recv() => {}
    }
    eprintln!("shutting down");
    accepting.shutdown().await;
    // Resets what is still open and detaches the XDP program.
    for stack in &stacks {
        stack.shutdown();
    }
    Ok(())
}

#[tokio::main]
async fn main() {
    let usage = "hyper_hello [--iface IF] [--ip ADDR] [--queues N] --port P";
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
