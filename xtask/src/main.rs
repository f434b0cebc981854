//! `cargo xtask`: what cargo cannot do alone — install the eBPF toolchain,
//! run the test suite with the kernel programs required, run benchmarks.

mod bench;
mod bench_monitor;
mod setup;

use std::{path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "xtask")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Install what the eBPF build needs (nightly rust-src, bpf-linker 0.10.0). Idempotent.
    Setup,
    /// Set up, then run every test with the eBPF programs required in the build.
    Test,
    /// Run the benchmarks and write their results into BENCHMARKS.md (needs root).
    Bench(bench::Options),
    /// Internal: one process of a fork or exec storm, used by `bench`.
    #[command(hide = true)]
    StormWorker(bench::StormWorker),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Setup => setup::run(),
        Command::Test => setup::run().and_then(|()| test()),
        Command::Bench(opts) => bench::run(opts),
        Command::StormWorker(worker) => worker.run(),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("xtask: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

fn test() -> anyhow::Result<()> {
    let status = std::process::Command::new(env!("CARGO"))
        .current_dir(workspace_root())
        .args(["test", "--workspace"])
        .env("PSMON_REQUIRE_EBPF", "1")
        .status()?;
    anyhow::ensure!(status.success(), "the tests failed ({status})");
    Ok(())
}
