//! `http-ceiling`: the naive baseline for the HTTP scenarios — a minimal hyper HTTP/1.1 server
//! that reads each request body and answers `202 {"ok":true}`, doing no parsing, hashing or
//! storage. Same runtime shape as `pulse` (tokio multi-thread, one worker per core, hyper
//! http1, TCP_NODELAY), so `pulse-load` against it measures the client-plus-HTTP ceiling of
//! this machine. Prints `listening on ADDR` like `pulse`; stops on SIGTERM or Ctrl-C.

use std::convert::Infallible;
use std::io::Write;
use std::net::SocketAddr;

use anyhow::Context;
use clap::Parser;
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

#[derive(Debug, Parser)]
#[command(
    name = "http-ceiling",
    about = "Answers every request 202 {\"ok\":true}."
)]
struct Args {
    /// Address to listen on (port 0 picks a free one).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
}

async fn answer(request: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    // Read the body as a real server must; a broken body still gets the canned answer.
    let _ = request.into_body().collect().await;
    let mut response = Response::new(Full::new(Bytes::from_static(b"{\"ok\":true}")));
    *response.status_mut() = StatusCode::ACCEPTED;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    Ok(response)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let addr = listener.local_addr()?;
    let mut stdout = std::io::stdout();
    writeln!(stdout, "listening on {addr}")?;
    stdout.flush()?;
    let shutdown = tokio::signal::ctrl_c();
    tokio::pin!(shutdown);
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(_) => continue,
            },
            _ = &mut shutdown => break,
            _ = term.recv() => break,
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            let service = hyper::service::service_fn(answer);
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
    Ok(())
}
