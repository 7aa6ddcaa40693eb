//! The `pulse` binary: parse the configuration, start logging, bind the listener, announce the
//! address on stdout, and serve until SIGTERM or SIGINT. Everything else is in the library.

use std::io::{IsTerminal, Write};
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use pulse_server::config::LogFormat;
use pulse_server::{clock, AppState, Config};
use tokio::net::TcpListener;
use tracing_subscriber::EnvFilter;

/// Logs go to stderr at the level of `PULSE_LOG`, else `RUST_LOG`, else `info`; in colour only
/// when stderr is a terminal, so files and journald get plain text.
fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_env("PULSE_LOG")
        .or_else(|_| EnvFilter::try_from_env("RUST_LOG"))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// Installs the SIGTERM and SIGINT handlers now and returns a future that completes on the
/// first of them.
///
/// The handlers are registered eagerly, before the address is announced: a lazily registered
/// handler (an `async fn` that calls `signal()` when first polled) leaves a window in which a
/// SIGTERM sent to a server that already answers `/readyz` kills it with the default action
/// instead of draining and flushing the log.
#[cfg(unix)]
fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("cannot install the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot install the SIGINT handler")?;
    Ok(async move {
        let name = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        };
        tracing::info!(signal = name, "shutdown signal received");
    })
}

/// Ctrl-C where Unix signals are not available.
#[cfg(not(unix))]
fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    Ok(async {
        let _ = tokio::signal::ctrl_c().await;
        tracing::info!("shutdown signal received");
    })
}

fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    runtime.enable_all();
    if let Some(threads) = config.worker_threads {
        runtime.worker_threads(usize::from(threads));
    }
    runtime
        .build()
        .context("cannot start the runtime")?
        .block_on(serve(config))
}

async fn serve(config: Config) -> anyhow::Result<()> {
    init_logging(config.log_format);
    pulse_server::check_exposure(&config)?;
    #[cfg(feature = "test-clock")]
    if let Some(start_ms) = config.test_clock {
        pulse_server::test_clock::start(start_ms);
    }
    let shutdown = shutdown_signal()?;
    let listener = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let addr = listener.local_addr().context("listener has no address")?;
    let state = Arc::new(AppState::open_any(&config, clock::now_ms()).await?);
    tracing::info!(%addr, data_dir = %config.data_dir.display(), "pulse listening");
    // The one line on stdout: scripts and tests read the bound address (port 0) from it.
    let mut stdout = std::io::stdout();
    writeln!(stdout, "listening on {addr}")?;
    stdout.flush()?;
    pulse_server::run(state, listener, shutdown).await?;
    Ok(())
}
