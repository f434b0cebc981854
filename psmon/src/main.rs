//! The `psmon` binary: parse arguments, set up logging, run the command,
//! map the outcome to an exit code (0 success, 1 runtime failure, 2 usage).

use std::process::ExitCode;

use clap::Parser;
use psmon::cli::{Cli, Command};
use tokio_util::sync::CancellationToken;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_new(&cli.log_level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();

    // One thread runs every task: psmon waits far more than it computes, and
    // a single thread spares each event a cross-thread wake-up. Blocking work
    // (/proc walks, waiting on children) goes to tokio's blocking pool.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("psmon: cannot start the async runtime: {err}");
            return ExitCode::from(1);
        }
    };
    let result = runtime.block_on(async {
        let shutdown = CancellationToken::new();
        psmon::signals::cancel_on_signals(shutdown.clone())?;
        match cli.command {
            Command::Trace(opts) => psmon::trace::run(opts, shutdown).await.map(|_| ()),
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("psmon: {err:#}");
            if err.downcast_ref::<psmon::cli::UsageError>().is_some() {
                ExitCode::from(2)
            } else {
                ExitCode::from(1)
            }
        }
    }
}
