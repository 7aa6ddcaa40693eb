//! The `pulse` binary: parse the configuration, start logging, bind the listener, announce the
//! address on stdout, and serve until SIGTERM or SIGINT. Everything else is in the library.

use std::io::Write;
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use pulse_server::config::LogFormat;
use pulse_server::{clock, AppState, Config};
use tokio::net::TcpListener;
use tracing_subscriber::EnvFilter;

fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_env("PULSE_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// Completes on SIGTERM or SIGINT (Ctrl-C).
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
    tracing::info!("shutdown signal received");
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    init_logging(config.log_format);
    pulse_server::check_exposure(&config)?;
    let listener = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let addr = listener.local_addr().context("listener has no address")?;
    let state = Arc::new(AppState::open(&config, clock::now_ms())?);
    tracing::info!(%addr, data_dir = %config.data_dir.display(), "pulse listening");
    // The one line on stdout: scripts and tests read the bound address (port 0) from it.
    let mut stdout = std::io::stdout();
    writeln!(stdout, "listening on {addr}")?;
    stdout.flush()?;
    pulse_server::run(state, listener, shutdown_signal()).await?;
    Ok(())
}
