//! The `kv-backend` binary: parses the command line, opens the store, binds,
//! prints `listening on ADDR` and serves until SIGTERM or SIGINT.
//! `kv-backend export ...` and `kv-backend import ...` are the state-file tools
//! (`tool.rs`).

use std::io::{IsTerminal, Write};
use std::process::ExitCode;

use clap::Parser;
use replikv_kv_backend::tool::{self, Tool};
use replikv_kv_backend::{run, AppState, Cli, Config, Store};

fn main() -> ExitCode {
    let subcommand = std::env::args_os().nth(1);
    if subcommand
        .as_ref()
        .is_some_and(|arg| arg == "export" || arg == "import")
    {
        return match tool::run(Tool::parse()) {
            Ok(summary) => {
                eprintln!("kv-backend: {summary}");
                ExitCode::SUCCESS
            }
            Err(error) => {
                eprintln!("kv-backend: {error}");
                ExitCode::FAILURE
            }
        };
    }
    serve_main()
}

#[tokio::main]
async fn serve_main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    match serve(Cli::parse()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!("{error}");
            eprintln!("kv-backend: {error}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(cli: Cli) -> Result<(), String> {
    let listen = cli.listen;
    let config = Config::from_cli(cli)?;
    let store = Store::open(&config).map_err(|e| format!("opening the store: {e}"))?;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| format!("binding {listen}: {e}"))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    tracing::info!(%addr, data_dir = %config.data_dir.display(), "listening");
    let mut stdout = std::io::stdout();
    writeln!(stdout, "listening on {addr}")
        .and_then(|()| stdout.flush())
        .map_err(|e| e.to_string())?;
    run(listener, AppState::new(store, &config), shutdown_signal())
        .await
        .map_err(|e| format!("serving: {e}"))?;
    tracing::info!("stopped");
    Ok(())
}

/// Completes on SIGTERM or SIGINT.
async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut terminate =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(signal) => signal,
                Err(error) => {
                    tracing::warn!(%error, "cannot listen for SIGTERM");
                    let _ = interrupt.await;
                    return;
                }
            };
        tokio::select! {
            _ = interrupt => {}
            _ = terminate.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = interrupt.await;
    }
    tracing::info!("shutting down");
}
