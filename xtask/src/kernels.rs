//! `cargo xtask kernels`: runs psmon on older kernels under qemu (software
//! emulation) — Debian's 6.1 and bullseye's 5.10, which bracket RHEL 9's
//! 5.14 — and checks that each event source reports a real `exit 7` and a
//! real SIGKILL there. Needs root and the Debian package registry.
//!
//! The guest is a busybox initramfs whose init script runs a static (musl)
//! psmon and prints `RESULT <source> exit7=<0|1> kill9=<0|1> gone=<0|1>`
//! lines, then the conformance checks of the event sources: a process with
//! threads killed is one exit with signal 9, an exec's path (ebpf), a loss
//! reported on a tiny buffer, and `auto` falling back to netlink, saying
//! why, where `/sys/kernel/btf/vmlinux` is absent (hidden under an empty
//! tmpfs: no Debian kernel is built without BTF).

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context, bail, ensure};

use crate::{file_starting_with, install_missing, sh};

const INIT: &str = r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
# Under emulation a source takes seconds to open (BTF is parsed): wait
# until the trace says it is watching, at most 30 s.
ready() { i=0; while [ $i -lt 300 ] && ! grep -q 'tracing process events' "$1"; do sleep 0.1; i=$((i+1)); done; }
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mount -t tmpfs tmpfs /tmp
echo "KERNEL $(uname -r)"
for src in ebpf netlink poll; do
  /psmon trace --source $src --json --poll-interval 200 --coalesce-ms 0 --duration 6 > /tmp/$src.out 2>/tmp/$src.err &
  ready /tmp/$src.err
  sleep 0.5
  sh -c 'exit 7' &
  E=$!
  sleep 100 &
  P=$!
  sleep 0.5
  kill -9 $P
  wait
  e=0; k=0; g=0
  grep '"event":"exit"' /tmp/$src.out | grep "\"pid\":$E," | grep -q '"exit_code":7' && e=1
  grep '"event":"exit"' /tmp/$src.out | grep "\"pid\":$P," | grep -q '"signal":9' && k=1
  grep '"event":"exit"' /tmp/$src.out | grep -q "\"pid\":$P," && g=1
  sed 's/^/  /' /tmp/$src.err
  echo "RESULT $src exit7=$e kill9=$k gone=$g"
done
for src in ebpf netlink; do
  # A process with threads (psmon itself) killed: one exit, of the group, signal 9.
  /psmon trace --source $src --json --coalesce-ms 0 --duration 6 > /tmp/t$src.out 2>/tmp/t$src.err &
  TR=$!
  ready /tmp/t$src.err
  sleep 0.5
  /psmon trace --source poll --duration 60 > /dev/null 2>&1 &
  T=$!
  sleep 0.5
  n=$(ls /proc/$T/task | wc -l)
  # And an exec of a real file (busybox runs its applets without one).
  /psmon check /nonexistent > /dev/null 2>&1 &
  X=$!
  sleep 0.3
  kill -9 $T
  wait $T 2>/dev/null
  wait $TR
  c=$(grep '"event":"exit"' /tmp/t$src.out | grep "\"pid\":$T," | grep -c '"signal":9')
  ok=0; [ "$n" -ge 2 ] && [ "$c" = 1 ] && ok=1
  echo "RESULT threads-$src ok=$ok threads=$n exits=$c"
  p=0; grep '"event":"exec"' /tmp/t$src.out | grep "\"pid\":$X," | grep -q '"path":"/psmon"' && p=1
  [ $src = ebpf ] && echo "RESULT exec-path-$src ok=$p"
  # A tiny buffer read once a second under a fork storm: the loss is reported.
  /psmon trace --source $src --json --ring-kib 4 --rcvbuf-kib 4 --queue 16 --coalesce-ms 1000 --duration 4 > /tmp/l$src.out 2>/tmp/l$src.err &
  ready /tmp/l$src.err
  i=0; while [ $i -lt 1500 ]; do true & i=$((i+1)); done
  wait
  l=0; grep -q '"event":"lost"' /tmp/l$src.out && l=1
  echo "RESULT lost-$src ok=$l"
done
# A kernel without BTF (its /sys/kernel/btf hidden under an empty tmpfs):
# `auto` must fall back to netlink and say why.
mount -t tmpfs none /sys/kernel/btf
/psmon trace --source auto --duration 1 > /dev/null 2> /tmp/nobtf.err
b=0; grep -q 'no BTF' /tmp/nobtf.err && grep -q 'source=netlink' /tmp/nobtf.err && b=1
sed 's/^/  /' /tmp/nobtf.err
echo "RESULT no-btf ok=$b"
poweroff -f
"#;

/// The RESULT lines a guest must print: three sources, then threads (2),
/// exec path (1), loss (2) and the BTF-less fallback (1).
const RESULTS: usize = 9;

pub fn run() -> anyhow::Result<()> {
    // SAFETY: geteuid has no preconditions.
    ensure!(
        // SAFETY: geteuid has no arguments and cannot fail.
        unsafe { libc::geteuid() } == 0,
        "run as root: it installs packages"
    );
    let dir = std::env::temp_dir().join(format!("psmon-kernels-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let result = (|| {
        install_tools()?;
        let psmon = crate::static_build()?;
        let initrd = initramfs(&dir, &psmon)?;
        let kernels = [
            fetch_kernel(
                &dir,
                None,
                r"^linux-image-6\.1\.0-[0-9]+-amd64$",
                "linux-image-6.1.0-",
            )?,
            fetch_kernel(
                &dir,
                Some("bullseye"),
                r"^linux-image-5\.10\.0-[0-9]+-amd64$",
                "linux-image-5.10.0-",
            )?,
        ];
        let mut failed = Vec::new();
        for kernel in &kernels {
            failed.extend(boot(kernel, &initrd)?);
        }
        ensure!(failed.is_empty(), "failed: {}", failed.join(", "));
        println!(
            "xtask: on both kernels ebpf and netlink reported exit 7, SIGKILL and a threaded group's one exit, ebpf an exec's path, both their losses on a tiny buffer, poll the exit; without BTF auto fell back to netlink"
        );
        Ok(())
    })();
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn install_tools() -> anyhow::Result<()> {
    install_missing(&[
        ("/usr/bin/qemu-system-x86_64", "qemu-system-x86"),
        ("/bin/busybox", "busybox-static"),
        ("/usr/bin/cpio", "cpio"),
        // ring (TLS) compiles C for the static musl build.
        ("/usr/bin/musl-gcc", "musl-tools"),
    ])
}

fn initramfs(dir: &Path, psmon: &Path) -> anyhow::Result<PathBuf> {
    let root = dir.join("root");
    for d in ["bin", "proc", "sys", "tmp", "dev"] {
        std::fs::create_dir_all(root.join(d))?;
    }
    std::fs::copy("/bin/busybox", root.join("bin/busybox"))?;
    std::fs::copy(psmon, root.join("psmon"))?;
    std::fs::write(root.join("init"), INIT)?;
    sh(
        Command::new("chmod").args(["+x"]).arg(root.join("init")),
        "chmod",
    )?;
    let initrd = dir.join("initrd.gz");
    let cpio = format!(
        "cd {} && find . | cpio -o -H newc 2>/dev/null | gzip -1 > {}",
        root.display(),
        initrd.display()
    );
    sh(
        Command::new("sh").args(["-c", &cpio]),
        "building the initramfs",
    )?;
    Ok(initrd)
}

/// Kernels downloaded once are kept here, on machines that keep it (CI
/// runs then boot them without the network); remove it to fetch newer ones.
const KERNEL_CACHE: &str = "/var/cache/psmon-kernels";

/// A cached vmlinuz of a package whose name starts with `prefix`.
fn cached_kernel(prefix: &str) -> Option<PathBuf> {
    let mut hits: Vec<PathBuf> = std::fs::read_dir(KERNEL_CACHE)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with(prefix))
        })
        .map(|p| p.join("vmlinuz"))
        .filter(|p| p.is_file())
        .collect();
    hits.sort();
    hits.pop()
}

/// The newest kernel package matching `pattern` (from `suite` in a private
/// source list, or from the system's sources): its vmlinuz, from the cache
/// when a package named `prefix…` is there, else downloaded and cached.
fn fetch_kernel(
    dir: &Path,
    suite: Option<&str>,
    pattern: &str,
    prefix: &str,
) -> anyhow::Result<PathBuf> {
    if let Some(hit) = cached_kernel(prefix) {
        println!("xtask: {} (cached)", hit.display());
        return Ok(hit);
    }
    let mut opts: Vec<String> = Vec::new();
    if let Some(suite) = suite {
        let apt = dir.join(format!("apt-{suite}"));
        std::fs::create_dir_all(apt.join("lists/partial"))?;
        std::fs::create_dir_all(apt.join("cache/archives/partial"))?;
        let list = apt.join("sources.list");
        std::fs::write(
            &list,
            format!("deb http://deb.debian.org/debian {suite} main\n"),
        )?;
        opts = vec![
            format!("-oDir::Etc::SourceList={}", list.display()),
            "-oDir::Etc::SourceParts=/dev/null".into(),
            format!("-oDir::State::Lists={}", apt.join("lists").display()),
            format!("-oDir::Cache={}", apt.join("cache").display()),
        ];
        sh(
            Command::new("apt-get").args(&opts).args(["update", "-qq"]),
            "apt-get update",
        )?;
    }
    let found = sh(
        Command::new("apt-cache")
            .args(&opts)
            .args(["search", "--names-only", pattern]),
        "apt-cache search",
    )?;
    let mut names: Vec<&str> = found.lines().filter_map(|l| l.split(' ').next()).collect();
    // linux-image-6.1.0-47-amd64: the newest ABI number last.
    names.sort_by_key(|n| {
        n.split('-')
            .nth(3)
            .and_then(|v| v.parse::<u32>().ok())
            .unwrap_or(0)
    });
    let name = *names
        .last()
        .with_context(|| format!("no package matches {pattern}"))?;
    let into = dir.join(name);
    std::fs::create_dir_all(&into)?;
    println!("xtask: downloading {name}");
    sh(
        Command::new("apt-get")
            .current_dir(&into)
            .args(&opts)
            .args(["download", name]),
        "apt-get download",
    )?;
    let deb = std::fs::read_dir(&into)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|x| x == "deb"))
        .context("the download left no .deb")?;
    sh(
        Command::new("dpkg-deb")
            .arg("-x")
            .arg(&deb)
            .arg(into.join("x")),
        "dpkg-deb",
    )?;
    let vmlinuz =
        file_starting_with(&into.join("x/boot"), "vmlinuz").context("no vmlinuz in the package")?;
    let keep = Path::new(KERNEL_CACHE).join(name);
    let kept =
        std::fs::create_dir_all(&keep).and_then(|()| std::fs::copy(&vmlinuz, keep.join("vmlinuz")));
    Ok(match kept {
        Ok(_) => keep.join("vmlinuz"),
        Err(_) => vmlinuz,
    })
}

/// Boots `kernel`; returns the checks that failed.
fn boot(kernel: &Path, initrd: &Path) -> anyhow::Result<Vec<String>> {
    // KVM is present but hangs at boot on these machines: emulate.
    let out = Command::new("timeout")
        .args([
            "300",
            "qemu-system-x86_64",
            "-accel",
            "tcg",
            "-cpu",
            "max",
            "-m",
            "1024",
            "-smp",
            "2",
        ])
        .arg("-kernel")
        .arg(kernel)
        .arg("-initrd")
        .arg(initrd)
        .args([
            "-append",
            "console=ttyS0 quiet panic=-1",
            "-nographic",
            "-no-reboot",
        ])
        .stdin(Stdio::null())
        .output()
        .context("running qemu")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let release = text
        .lines()
        .find_map(|l| l.find("KERNEL ").map(|at| l[at + 7..].trim()))
        .unwrap_or("(did not boot)")
        .to_string();
    println!("xtask: Linux {release}");
    let mut failed = Vec::new();
    let mut results = 0;
    for line in text
        .lines()
        .filter_map(|l| l.trim().strip_prefix("RESULT "))
    {
        results += 1;
        println!("  {line}");
        let ok = |key: &str| line.contains(&format!("{key}=1"));
        // The guest's init reaps at once: poll cannot see the 7 of a process
        // that lived a few ms, nor the signal of one already reaped; it must
        // still see the killed one go.
        let passed = if line.starts_with("poll") {
            ok("gone")
        } else if line.starts_with("ebpf") || line.starts_with("netlink") {
            ok("exit7") && ok("kill9")
        } else {
            ok("ok")
        };
        if !passed {
            failed.push(format!("{release} {line}"));
        }
    }
    if results != RESULTS {
        bail!(
            "Linux {release}: the guest reported {results} of {RESULTS} results; its console said:\n{text}"
        );
    }
    if !failed.is_empty() {
        println!("the guest's console:\n{text}");
    }
    Ok(failed)
}
