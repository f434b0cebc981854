//! Builds the kernel programs (`psmon-ebpf`) for `bpfel-unknown-none` and
//! hands the object to the crate as `PSMON_EBPF_OBJ`.
//!
//! The eBPF build needs a nightly toolchain with `rust-src` and `bpf-linker`
//! (`cargo xtask setup` installs both). Without them psmon still builds, with a
//! warning, and its `ebpf` source refuses at run time with the reason; set
//! `PSMON_REQUIRE_EBPF=1` (CI does) to make a missing toolchain an error.

use std::{
    env, fs,
    path::{Path, PathBuf},
    process::Command,
};

fn main() {
    println!("cargo::rustc-check-cfg=cfg(psmon_ebpf)");
    println!("cargo::rerun-if-env-changed=PSMON_REQUIRE_EBPF");
    println!("cargo::rerun-if-env-changed=PSMON_SKIP_EBPF");

    let manifest_dir = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").unwrap());
    let workspace = manifest_dir.parent().unwrap().to_path_buf();
    let ebpf_dir = workspace.join("psmon-ebpf");
    println!("cargo::rerun-if-changed={}", ebpf_dir.join("src").display());
    println!(
        "cargo::rerun-if-changed={}",
        ebpf_dir.join("Cargo.toml").display()
    );

    let out_dir = PathBuf::from(env::var_os("OUT_DIR").unwrap());
    let object = out_dir.join("psmon-ebpf.o");

    let result = if env::var_os("PSMON_SKIP_EBPF").is_some() {
        Err("PSMON_SKIP_EBPF is set".to_string())
    } else {
        build(&workspace, &out_dir)
    };
    match result {
        Ok(built) => {
            fs::copy(&built, &object).expect("copy the eBPF object into OUT_DIR");
            println!("cargo::rustc-cfg=psmon_ebpf");
            println!("cargo::rustc-env=PSMON_EBPF_MISSING=");
        }
        Err(why) => {
            if env::var_os("PSMON_REQUIRE_EBPF").is_some_and(|v| v != "0") {
                panic!("the eBPF programs did not build and PSMON_REQUIRE_EBPF is set: {why}");
            }
            println!(
                "cargo::warning=psmon is built without its eBPF programs ({why}); \
                 run `cargo xtask setup` and rebuild to get the `ebpf` source"
            );
            fs::write(&object, b"").expect("write the empty eBPF placeholder");
            println!("cargo::rustc-env=PSMON_EBPF_MISSING={why}");
        }
    }
    println!("cargo::rustc-env=PSMON_EBPF_OBJ={}", object.display());
}

fn build(workspace: &Path, out_dir: &Path) -> Result<PathBuf, String> {
    if which("bpf-linker").is_none() {
        return Err("bpf-linker is not installed".into());
    }
    let target_dir = out_dir.join("ebpf-target");
    let mut cmd = Command::new("rustup");
    cmd.current_dir(workspace)
        .args([
            "run",
            "nightly",
            "cargo",
            "build",
            "--package",
            "psmon-ebpf",
        ])
        .args(["--bin", "psmon-ebpf", "--target", "bpfel-unknown-none"])
        .args(["-Z", "build-std=core", "--release", "--target-dir"])
        .arg(&target_dir);
    // The outer cargo's settings describe the host build, not this one.
    for (key, _) in env::vars_os() {
        let key = key.to_string_lossy();
        if key.starts_with("CARGO") || key.starts_with("RUSTC") || key == "RUSTFLAGS" {
            cmd.env_remove(key.as_ref());
        }
    }
    let arch = env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_else(|_| "x86_64".into());
    cmd.env(
        "CARGO_ENCODED_RUSTFLAGS",
        format!("--cfg=bpf_target_arch=\"{arch}\"\x1f-Cdebuginfo=2\x1f-Clink-arg=--btf"),
    );
    let output = cmd
        .output()
        .map_err(|e| format!("cannot run `rustup run nightly cargo`: {e}"))?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let tail: Vec<&str> = stderr.lines().rev().take(40).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        // A toolchain that is missing is a warning; code that does not compile is an error.
        if stderr.contains("error[E") || stderr.contains("error: could not compile") {
            panic!("the eBPF programs failed to compile:\n{}", tail.join("\n"));
        }
        return Err(format!(
            "the nightly eBPF build failed: {}",
            tail.last().unwrap_or(&"no output")
        ));
    }
    Ok(target_dir.join("bpfel-unknown-none/release/psmon-ebpf"))
}

fn which(program: &str) -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = env::var_os("PATH")
        .map(|p| env::split_paths(&p).collect())
        .unwrap_or_default();
    if let Some(home) = env::var_os("CARGO_HOME") {
        dirs.push(PathBuf::from(home).join("bin"));
    }
    if let Some(home) = env::var_os("HOME") {
        dirs.push(PathBuf::from(home).join(".cargo/bin"));
    }
    dirs.into_iter()
        .map(|d| d.join(program))
        .find(|p| p.is_file())
}
