//! The `odata-delta-gateway` binary: parse flags, load the configuration, run the gateway (or the
//! demo) until SIGTERM or Ctrl-C.

use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use odata_delta_gateway::Shared;
use odata_delta_gateway::config::{Cli, Command, Config, LogFormat};
use tokio_util::sync::CancellationToken;

mod demo;

/// The binary allocates through jemalloc. A refresh allocates page buffers and rows on the
/// blocking pool and frees them on other threads, and glibc's malloc spent a sixth of a first
/// read's CPU on that (its arena locks and the futex calls behind them); jemalloc's thread caches
/// and one arena give the same work about 15% less CPU in all, and a lower peak RSS.
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's options, read before `main`: one arena (the work is a pipeline across threads, not
/// independent threads, so per-core arenas only kept memory apart), small thread caches, and
/// freed pages returned to the system a second after they fall idle, by jemalloc's own
/// background thread. An operator's `_RJEM_MALLOC_CONF` is applied after these and wins.
#[cfg(not(target_env = "msvc"))]
#[allow(non_upper_case_globals)]
#[unsafe(export_name = "_rjem_malloc_conf")]
static malloc_conf: &[u8; 86] =
    b"narenas:1,tcache_max:4096,background_thread:true,dirty_decay_ms:1000,muzzy_decay_ms:0\0";

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(Command::Feeds(args)) = &cli.command {
        // No runtime and no logging: a short synchronous look at the store.
        return match odata_delta_gateway::operator::run(args) {
            Ok(out) => {
                print!("{out}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        };
    }
    // The configuration is read before logging starts, since it says how to log; its mistakes
    // are printed plainly.
    let config = match &cli.command {
        None => match Config::load(&cli.flags) {
            Ok(c) => Some(c),
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::FAILURE;
            }
        },
        Some(_) => None,
    };
    init_logging(config.as_ref().map_or(LogFormat::Text, |c| c.log_format));
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Some(Command::Demo(flags)) => demo::run(flags, shutdown_signal()).await,
            Some(Command::Feeds(_)) => Err("the feeds commands run without a runtime".into()),
            None => match config {
                Some(config) => run(config).await,
                None => Err("no configuration".into()),
            },
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Logs go to stderr, filtered by `RUST_LOG`; JSON lines carry the fields of the spans they were
/// written in (the request id among them) at the top level, which log shippers index.
fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,tower_http=warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(true)
            .init(),
    }
}

async fn run(config: Config) -> Result<(), String> {
    let shared = Shared::new(config).map_err(|e| e.to_string())?;
    let running = odata_delta_gateway::start(Arc::new(shared), shutdown_signal())
        .await
        .map_err(|e| format!("cannot listen: {e}"))?;
    running.wait().await;
    Ok(())
}

/// A token cancelled on SIGTERM or Ctrl-C.
fn shutdown_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let cancel = token.clone();
    tokio::spawn(async move {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        {
            let mut term =
                match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                    Ok(s) => s,
                    Err(_) => {
                        let _ = ctrl_c.await;
                        cancel.cancel();
                        return;
                    }
                };
            tokio::select! {
                _ = ctrl_c => {},
                _ = term.recv() => {},
            }
        }
        #[cfg(not(unix))]
        let _ = ctrl_c.await;
        tracing::info!("shutting down: draining in-flight requests");
        cancel.cancel();
    });
    token
}
