//! `cargo xtask`: what cargo cannot do alone — install the eBPF toolchain,
//! run the test suite with the kernel programs required, run benchmarks.

mod bench;
mod bench_causes;
mod bench_churn;
mod bench_cluster;
mod bench_fleet;
mod bench_monitor;
mod bench_probes;
mod kernels;
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
    /// Run psmon's sources on Linux 6.1 and 5.10 under qemu (needs root).
    Kernels,
    /// Build the RPM (release build) under target/rpm/; prints its path last.
    Rpm,
    /// Internal: one process of a fork or exec storm, used by `bench`.
    #[command(hide = true)]
    StormWorker(bench::StormWorker),
    /// Internal: the simplest /proc poller (readlink every /proc/*/exe once
    /// a second), the idle-cost baseline of `bench`.
    #[command(hide = true)]
    Poller,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Setup => setup::run(),
        Command::Test => setup::run().and_then(|()| test()),
        Command::Bench(opts) => bench::run(opts),
        Command::Kernels => kernels::run(),
        Command::Rpm => setup::run().and_then(|()| rpm()),
        Command::StormWorker(worker) => worker.run(),
        Command::Poller => bench_monitor::poller(),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("xtask: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// `packaging/rpm.sh` on the release build.
fn rpm() -> anyhow::Result<()> {
    let root = workspace_root();
    let status = std::process::Command::new(env!("CARGO"))
        .current_dir(&root)
        .args(["build", "--release", "--package", "psmon"])
        .env("PSMON_REQUIRE_EBPF", "1")
        .status()?;
    anyhow::ensure!(status.success(), "building psmon failed");
    let status = std::process::Command::new(root.join("packaging/rpm.sh"))
        .arg(root.join("target/release/psmon"))
        .arg(root.join("target/rpm"))
        .status()?;
    anyhow::ensure!(status.success(), "packaging/rpm.sh failed");
    Ok(())
}

fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

/// Runs every test of the workspace, echoing cargo's output, and closes with
/// one line of totals over all test binaries (cargo's own last line is that
/// of the last binary, often the doc tests' "0 passed").
fn test() -> anyhow::Result<()> {
    use std::io::{BufRead, BufReader};
    let mut child = std::process::Command::new(env!("CARGO"))
        .current_dir(workspace_root())
        // Every binary runs even when one fails: the totals say it all.
        .args(["test", "--workspace", "--no-fail-fast"])
        .env("PSMON_REQUIRE_EBPF", "1")
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    // Read on a thread of its own: a process that a failed test left
    // running keeps the pipe open after cargo is done, and reading to its
    // end would wait for that process (CI's whole time limit).
    let out = child.stdout.take().expect("piped");
    let (tx, lines) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let (mut passed, mut failed, mut ignored) = (0u64, 0u64, 0u64);
    let mut take = |line: String| {
        println!("{line}");
        if let Some(rest) = line.strip_prefix("test result: ") {
            let count = |what: &str| {
                rest.split(';')
                    .find_map(|part| {
                        part.trim()
                            .trim_start_matches("ok. ")
                            .trim_start_matches("FAILED. ")
                            .strip_suffix(what)
                    })
                    .and_then(|n| n.trim().parse::<u64>().ok())
                    .unwrap_or(0)
            };
            passed += count(" passed");
            failed += count(" failed");
            ignored += count(" ignored");
        }
    };
    let status = loop {
        match lines.recv_timeout(std::time::Duration::from_millis(200)) {
            Ok(line) => take(line),
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break child.wait()?,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                if let Some(status) = child.try_wait()? {
                    // What cargo wrote last is still in the pipe.
                    let mut open = true;
                    loop {
                        match lines.recv_timeout(std::time::Duration::from_millis(500)) {
                            Ok(line) => take(line),
                            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                                open = false;
                                break;
                            }
                            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => break,
                        }
                    }
                    if open {
                        println!(
                            "xtask: a process the tests left running still holds their output \
                             open; not waited for"
                        );
                    }
                    break status;
                }
            }
        }
    };
    println!("tests: {passed} passed, {failed} failed, {ignored} skipped");
    anyhow::ensure!(status.success(), "the tests failed ({status})");
    Ok(())
}
