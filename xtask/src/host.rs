//! `cargo xtask host`: psmon on a host like its users' — a Debian 12 guest
//! booted under qemu (software emulation) with systemd 252 as PID 1 and
//! SELinux enforcing, psmon installed from its RPM with the RPM's scriptlets,
//! and a scenario run inside as root (`tests/host/scenario.sh`, or the script
//! given with `--run`). The guest's output is streamed here; the exit status
//! is the script's.
//!
//! The guest's disk is built once from Debian's packages with mmdebstrap,
//! labelled with the guest's own policy (setfiles), and kept in
//! /var/cache/psmon-host (keyed by what it is built from); each run boots a
//! copy-on-write overlay of it, so a run never changes it. The RPMs and the
//! script travel on a second disk.

use std::{
    hash::{Hash, Hasher},
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, bail, ensure};

use crate::{file_starting_with, install_missing, sh, workspace_root};

#[derive(clap::Args)]
pub struct Options {
    /// Run this script as root in the guest instead of the scenario
    /// (psmon is installed from its RPM first; the script's directory is
    /// not copied, only the script).
    #[arg(long, value_name = "SCRIPT")]
    run: Option<PathBuf>,
}

/// What the guest is built from, besides the minimal base: systemd as init,
/// SELinux (the reference policy) and auditd, the kernel, rpm to install
/// psmon's package, and the services the scenario watches.
const PACKAGES: &[&str] = &[
    "systemd",
    "systemd-sysv",
    "systemd-coredump",
    "dbus",
    "udev",
    "kmod",
    "linux-image-amd64",
    "initramfs-tools",
    "selinux-basics",
    "selinux-policy-default",
    "auditd",
    "policycoreutils",
    "rpm",
    "openssh-server",
    "cron",
    "rsyslog",
    "redis-server",
    "nginx-light",
    "procps",
    "iproute2",
    "curl",
    "python3",
];

/// Where built guests are kept (CI machines keep /var/cache between runs
/// where they can; a cold build takes a few minutes).
const CACHE: &str = "/var/cache/psmon-host";

/// The longest a guest may run, boots included.
const TIME_LIMIT: Duration = Duration::from_secs(20 * 60);

struct Guest {
    disk: PathBuf,
    kernel: PathBuf,
    initrd: PathBuf,
}

pub fn run(opts: Options) -> anyhow::Result<()> {
    ensure!(
        // SAFETY: geteuid has no arguments and cannot fail.
        unsafe { libc::geteuid() } == 0,
        "run as root: it installs packages and builds a disk image"
    );
    install_tools()?;
    let started = Instant::now();
    let guest = guest()?;
    println!(
        "xtask: guest ready in {:.0} s",
        started.elapsed().as_secs_f64()
    );
    let rpms = crate::rpm_builds(&["1", "2"])?;
    let dir = std::env::temp_dir().join(format!("psmon-host-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let result = (|| {
        let payload = payload(&dir, &rpms, opts.run.as_deref())?;
        boot(&dir, &guest, &payload)
    })();
    let _ = std::fs::remove_dir_all(&dir);
    let code = result?;
    ensure!(code == 0, "the guest's script exited with {code}");
    Ok(())
}

fn install_tools() -> anyhow::Result<()> {
    install_missing(&[
        ("/usr/bin/qemu-system-x86_64", "qemu-system-x86"),
        ("/usr/bin/qemu-img", "qemu-utils"),
        ("/usr/bin/mmdebstrap", "mmdebstrap"),
        ("/usr/sbin/setfiles", "policycoreutils"),
        ("/usr/sbin/mkfs.ext4", "e2fsprogs"),
    ])
}

/// The files the guest is made from, besides its packages.
fn guest_files() -> [PathBuf; 2] {
    let here = workspace_root().join("tests/host");
    [here.join("configure-guest.sh"), here.join("harness.sh")]
}

/// The cached guest for what it is built from now, built when missing.
fn guest() -> anyhow::Result<Guest> {
    let mut hasher = std::hash::DefaultHasher::new();
    PACKAGES.hash(&mut hasher);
    for file in guest_files() {
        std::fs::read(&file)
            .with_context(|| format!("reading {}", file.display()))?
            .hash(&mut hasher);
    }
    let dir = Path::new(CACHE).join(format!("bookworm-{:016x}", hasher.finish()));
    let guest = Guest {
        disk: dir.join("root.img"),
        kernel: dir.join("vmlinuz"),
        initrd: dir.join("initrd.img"),
    };
    if guest.disk.is_file() && guest.kernel.is_file() && guest.initrd.is_file() {
        println!("xtask: guest {} (cached)", dir.display());
        return Ok(guest);
    }
    println!("xtask: building the guest in {}", dir.display());
    let building = dir.with_extension("building");
    let _ = std::fs::remove_dir_all(&building);
    std::fs::create_dir_all(&building)?;
    let root = building.join("root");
    sh(
        Command::new("mmdebstrap")
            .args(["--variant=minbase", "--quiet"])
            .arg(format!("--include={}", PACKAGES.join(",")))
            .arg("bookworm")
            .arg(&root),
        "mmdebstrap",
    )?;
    let [configure, _] = guest_files();
    sh(
        Command::new("bash").arg(&configure).arg(&root),
        "configure-guest.sh",
    )?;
    // Labelled here with the guest's own policy, so that its first boot is
    // already enforcing (no relabelling boot).
    let policy = file_starting_with(&root.join("etc/selinux/default/policy"), "policy.")
        .context("the guest has no compiled SELinux policy")?;
    sh(
        Command::new("setfiles")
            .arg("-r")
            .arg(&root)
            .arg("-c")
            .arg(&policy)
            .arg(root.join("etc/selinux/default/contexts/files/file_contexts"))
            .arg(&root),
        "setfiles",
    )?;
    let boot = root.join("boot");
    std::fs::copy(
        file_starting_with(&boot, "vmlinuz-")?,
        building.join("vmlinuz"),
    )?;
    std::fs::copy(
        file_starting_with(&boot, "initrd.img-")?,
        building.join("initrd.img"),
    )?;
    // mke2fs copies the files with their extended attributes (the labels).
    sh(
        Command::new("mkfs.ext4")
            .args(["-q", "-F", "-L", "psmon-host", "-d"])
            .arg(&root)
            .arg(building.join("root.img"))
            .arg("3G"),
        "mkfs.ext4",
    )?;
    std::fs::remove_dir_all(&root)?;
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::rename(&building, &dir)?;
    // Guests built from older files are of no more use.
    for old in std::fs::read_dir(CACHE)?.filter_map(|e| e.ok().map(|e| e.path())) {
        if old != dir {
            let _ = std::fs::remove_dir_all(&old);
        }
    }
    Ok(guest)
}

/// The second disk: the RPMs (psmon.rpm, and psmon-next.rpm, a newer
/// release of the same build, for the upgrade), the guest's entry point
/// (run.sh) and the script it runs (script.sh).
fn payload(dir: &Path, rpms: &[PathBuf], script: Option<&Path>) -> anyhow::Result<PathBuf> {
    let files = dir.join("payload");
    std::fs::create_dir_all(&files)?;
    let here = workspace_root().join("tests/host");
    std::fs::copy(&rpms[0], files.join("psmon.rpm"))?;
    std::fs::copy(&rpms[1], files.join("psmon-next.rpm"))?;
    std::fs::copy(here.join("run.sh"), files.join("run.sh"))?;
    let script = script.map_or_else(|| here.join("scenario.sh"), Path::to_path_buf);
    std::fs::copy(&script, files.join("script.sh"))
        .with_context(|| format!("reading {}", script.display()))?;
    let image = dir.join("payload.img");
    sh(
        Command::new("mkfs.ext4")
            .args(["-q", "-F", "-d"])
            .arg(&files)
            .arg(&image)
            .arg("256M"),
        "mkfs.ext4 (payload)",
    )?;
    Ok(image)
}

/// Boots the guest on an overlay of its disk with the payload; streams
/// what the script writes (the guest's second serial port) and returns its
/// exit status. A guest that reboots (the scenario asks for one) is booted
/// again by a new qemu on the same disk: a cold boot, as fast as the first
/// (a reset qemu emulates the rebooted guest many times slower). The
/// guest's console goes to a file, shown when the guest ends without saying
/// how the script did.
fn boot(dir: &Path, guest: &Guest, payload: &Path) -> anyhow::Result<i32> {
    let overlay = dir.join("root.qcow2");
    sh(
        Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2", "-F", "raw", "-b"])
            .arg(guest.disk.canonicalize()?)
            .arg(&overlay),
        "qemu-img create",
    )?;
    let console = dir.join("console.log");
    let started = Instant::now();
    for _ in 0..3 {
        match run_qemu(guest, &overlay, payload, &console, started)? {
            Ended::Exit(code) => {
                println!(
                    "xtask: the guest ran {:.0} s",
                    started.elapsed().as_secs_f64()
                );
                return Ok(code);
            }
            Ended::Reboot => println!("xtask: the guest rebooted; booting it again"),
            Ended::Unknown => break,
        }
    }
    let text = std::fs::read_to_string(&console).unwrap_or_default();
    let tail: Vec<&str> = text.lines().rev().take(80).collect();
    let tail: Vec<&str> = tail.into_iter().rev().collect();
    bail!(
        "the guest ended without its script's exit status after {:.0} s; the last of its console:\n{}",
        started.elapsed().as_secs_f64(),
        tail.join("\n")
    )
}

/// How one run of qemu ended.
enum Ended {
    /// The script's exit status.
    Exit(i32),
    /// The guest rebooted (qemu runs with -no-reboot, so it stopped).
    Reboot,
    /// Neither: the guest died, hung or ran out of time.
    Unknown,
}

fn run_qemu(
    guest: &Guest,
    overlay: &Path,
    payload: &Path,
    console: &Path,
    started: Instant,
) -> anyhow::Result<Ended> {
    let drive =
        |path: &Path, format: &str| format!("file={},if=virtio,format={format}", path.display());
    // KVM is present but hangs at boot on these machines: emulate.
    let mut qemu = Command::new("qemu-system-x86_64")
        .args(["-accel", "tcg", "-cpu", "max", "-m", "2048", "-smp", "2"])
        .args(["-nodefaults", "-no-user-config", "-display", "none"])
        .args(["-monitor", "none", "-net", "none", "-no-reboot"])
        .arg("-kernel")
        .arg(&guest.kernel)
        .arg("-initrd")
        .arg(&guest.initrd)
        .args([
            "-append",
            "root=/dev/vda rw console=ttyS0 selinux=1 security=selinux enforcing=1 panic=-1",
        ])
        .arg("-drive")
        .arg(drive(overlay, "qcow2"))
        .arg("-drive")
        .arg(drive(payload, "raw"))
        .arg("-serial")
        .arg(format!("file:{}", console.display()))
        .args(["-serial", "stdio"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .context("running qemu")?;
    let out = qemu.stdout.take().expect("piped");
    let (tx, lines) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).split(b'\n').map_while(Result::ok) {
            let line = String::from_utf8_lossy(&line).trim_end().to_string();
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut ended = Ended::Unknown;
    loop {
        match lines.recv_timeout(Duration::from_secs(1)) {
            Ok(line) => {
                println!("guest: {line}");
                if let Some(n) = line.strip_prefix("PSMON-HOST-EXIT ") {
                    if let Ok(code) = n.trim().parse::<i32>() {
                        ended = Ended::Exit(code);
                    }
                } else if line == "psmon-host: rebooting" {
                    ended = Ended::Reboot;
                }
            }
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                if started.elapsed() > TIME_LIMIT {
                    let _ = qemu.kill();
                    println!("xtask: the guest ran {TIME_LIMIT:?}; stopped");
                    ended = Ended::Unknown;
                    break;
                }
            }
        }
    }
    let _ = qemu.wait();
    Ok(ended)
}
