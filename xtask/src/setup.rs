//! `cargo xtask setup`: installs the eBPF build toolchain on a fresh machine
//! and does nothing (quickly) when it is already there.
//!
//! What is needed and why these versions: ../shared/PLATFORM.md. bpf-linker
//! 0.10.0 links against the nightly's own LLVM; later versions need a system
//! LLVM that Debian 12 lacks.

use std::process::Command;

use anyhow::{Context, ensure};

const BPF_LINKER_VERSION: &str = "0.10.0";

pub fn run() -> anyhow::Result<()> {
    ensure_nightly_rust_src()?;
    ensure_bpf_linker()?;
    println!("xtask: eBPF toolchain ready (nightly + rust-src, bpf-linker {BPF_LINKER_VERSION})");
    Ok(())
}

fn output(cmd: &mut Command) -> Option<String> {
    let out = cmd.output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

fn run_checked(cmd: &mut Command, what: &str) -> anyhow::Result<()> {
    println!("xtask: {what}");
    let status = cmd
        .status()
        .with_context(|| format!("cannot start: {what}"))?;
    ensure!(status.success(), "{what} failed ({status})");
    Ok(())
}

fn ensure_nightly_rust_src() -> anyhow::Result<()> {
    let installed = output(Command::new("rustup").args([
        "component",
        "list",
        "--toolchain",
        "nightly",
        "--installed",
    ]));
    match installed {
        Some(list) if list.lines().any(|l| l.starts_with("rust-src")) => Ok(()),
        Some(_) => run_checked(
            Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", "nightly"]),
            "installing rust-src for the nightly toolchain",
        ),
        None => run_checked(
            Command::new("rustup").args([
                "toolchain",
                "install",
                "nightly",
                "--profile",
                "minimal",
                "--component",
                "rust-src",
            ]),
            "installing the nightly toolchain with rust-src",
        ),
    }
}

fn ensure_bpf_linker() -> anyhow::Result<()> {
    let version = output(Command::new("bpf-linker").arg("--version")).or_else(|| {
        let home = std::env::var_os("CARGO_HOME")
            .map(std::path::PathBuf::from)
            .or_else(|| {
                std::env::var_os("HOME").map(|h| std::path::PathBuf::from(h).join(".cargo"))
            })?;
        output(Command::new(home.join("bin/bpf-linker")).arg("--version"))
    });
    if version.is_some_and(|v| v.contains(BPF_LINKER_VERSION)) {
        return Ok(());
    }
    // Built with the stable toolchain; its default feature uses the
    // nightly's LLVM library at run time.
    run_checked(
        Command::new("cargo").args([
            "+stable",
            "install",
            &format!("bpf-linker@{BPF_LINKER_VERSION}"),
            "--locked",
            "--force",
        ]),
        "installing bpf-linker (about a minute)",
    )
}
