//! `cargo xtask`: what cargo cannot do alone — install the eBPF toolchain,
//! run the test suite with the kernel programs required, run benchmarks.

mod bench;
mod host;
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
    /// Build the RPM (static release build) under target/rpm/; prints its path last.
    Rpm,
    /// Boot a Debian 12 guest (systemd 252, SELinux enforcing) under qemu,
    /// install the RPM with its scriptlets and run the host scenario, or
    /// `--run SCRIPT`, as root inside (needs root).
    Host(host::Options),
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
        Command::Rpm => setup::run().and_then(|()| rpm_builds(&["1"]).map(drop)),
        Command::Host(opts) => setup::run().and_then(|()| host::run(opts)),
        Command::StormWorker(worker) => worker.run(),
        Command::Poller => bench::poller(),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("xtask: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// The static (musl) release build of psmon: one binary for every glibc,
/// RHEL 9's 2.34 as well as the newer one of the machine that built it.
fn static_build() -> anyhow::Result<PathBuf> {
    let target = "x86_64-unknown-linux-musl";
    // ring (TLS) compiles C: with musl's wrapper.
    install_missing(&[("/usr/bin/musl-gcc", "musl-tools")])?;
    let status = std::process::Command::new("rustup")
        .args(["target", "add", target])
        .status()?;
    anyhow::ensure!(status.success(), "rustup target add {target} failed");
    println!("xtask: building a static psmon");
    let status = std::process::Command::new(env!("CARGO"))
        .current_dir(workspace_root())
        .args([
            "build",
            "--release",
            "--package",
            "psmon",
            "--target",
            target,
        ])
        .env("PSMON_REQUIRE_EBPF", "1")
        // ring (TLS) compiles C: with musl's wrapper (Debian's musl-tools).
        .env("CC_x86_64_unknown_linux_musl", "musl-gcc")
        .status()?;
    anyhow::ensure!(status.success(), "building the static psmon failed");
    Ok(workspace_root().join(format!("target/{target}/release/psmon")))
}

/// `packaging/rpm.sh` on the static release build, once for each release
/// number given; the RPMs' paths, in that order.
fn rpm_builds(releases: &[&str]) -> anyhow::Result<Vec<PathBuf>> {
    let root = workspace_root();
    let binary = static_build()?;
    let mut rpms = Vec::new();
    for release in releases {
        let out = std::process::Command::new(root.join("packaging/rpm.sh"))
            .arg(&binary)
            .arg(root.join("target/rpm"))
            .env("PSMON_RPM_RELEASE", release)
            .stderr(std::process::Stdio::inherit())
            .output()?;
        anyhow::ensure!(out.status.success(), "packaging/rpm.sh failed");
        let stdout = String::from_utf8_lossy(&out.stdout);
        print!("{stdout}");
        let rpm = stdout
            .lines()
            .last()
            .map(PathBuf::from)
            .filter(|p| p.is_file())
            .ok_or_else(|| anyhow::anyhow!("packaging/rpm.sh printed no RPM"))?;
        rpms.push(rpm);
    }
    Ok(rpms)
}

/// Runs `cmd` to the end; its stdout, or an error naming `what` with what
/// it printed.
fn sh(cmd: &mut std::process::Command, what: &str) -> anyhow::Result<String> {
    use anyhow::Context;
    let out = cmd
        .output()
        .with_context(|| format!("cannot run: {what}"))?;
    anyhow::ensure!(
        out.status.success(),
        "{what} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Installs, from Debian's packages, each package whose file is missing
/// (`(file, package)` pairs); a no-op when every file is there.
fn install_missing(tools: &[(&str, &str)]) -> anyhow::Result<()> {
    let missing: Vec<&str> = tools
        .iter()
        .filter(|(path, _)| !std::path::Path::new(path).exists())
        .map(|(_, package)| *package)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    println!("xtask: installing {}", missing.join(" "));
    sh(
        std::process::Command::new("apt-get").args(["update", "-qq"]),
        "apt-get update",
    )?;
    sh(
        std::process::Command::new("apt-get")
            .args(["install", "-y", "-qq"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
        "apt-get install",
    )?;
    Ok(())
}

/// The first file in `dir` whose name starts with `prefix`.
fn file_starting_with(dir: &std::path::Path, prefix: &str) -> anyhow::Result<PathBuf> {
    std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with(prefix))
        })
        .ok_or_else(|| anyhow::anyhow!("no {prefix}* in {}", dir.display()))
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
        // With the hidden fault request the self-check's tests inject.
        .args(["test", "--workspace", "--no-fail-fast"])
        .args(["--features", "psmon/fault-injection"])
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
