//! Why a watched process died, as the kernel told psmon: the signal and
//! who sent it (with the sender's parent and grandparent, taken in the
//! kernel when the signal was generated), the kernel itself (a fault, a
//! resource limit), or the OOM killer (with the victim's memory cgroup).
//! Only the `ebpf` source sees senders; with the others a cause is unknown
//! and says so rather than guess.

use serde::{Deserialize, Serialize};

use crate::event::ExitStatus;

/// The process that was running when a signal was generated.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sender {
    pub pid: u32,
    pub uid: u32,
    pub comm: String,
    /// Its parent and grandparent: (pid, comm).
    pub parent: Option<(u32, String)>,
    pub grandparent: Option<(u32, String)>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Cause {
    /// A process sent the signal.
    Sent { signal: i32, sender: Sender },
    /// The kernel raised it for the process itself: a fault (SIGSEGV,
    /// SIGBUS, SIGILL, SIGFPE) or a resource limit (SIGXCPU, SIGXFSZ).
    Kernel { signal: i32 },
    /// The OOM killer chose it; `trigger` is the task whose allocation
    /// set it off.
    Oom {
        cgroup: Option<String>,
        trigger: Sender,
    },
    /// psmon's own signal (a hang kill, a group stop, a drill).
    Psmon { signal: i32 },
}

/// Signals the kernel raises on a fault or a limit.
const KERNEL_SIGNALS: [i32; 6] = [4, 7, 8, 11, 24, 25];

impl Cause {
    /// The cause of a signal generated for process `target` with `si_code`
    /// `code` (`None`: no siginfo); `me` is psmon's own pid.
    pub fn of_signal(
        target: u32,
        signal: i32,
        code: Option<i32>,
        sender: Sender,
        me: u32,
    ) -> Cause {
        // si_code > 0 is the kernel's own (SI_USER is 0, sigqueue and tgkill
        // are negative); a limit signal comes without siginfo.
        let by_kernel = code.is_some_and(|c| c > 0)
            || (code.is_none() && sender.pid == target && KERNEL_SIGNALS.contains(&signal));
        if sender.pid == me {
            Cause::Psmon { signal }
        } else if by_kernel && sender.pid == target {
            Cause::Kernel { signal }
        } else {
            Cause::Sent { signal, sender }
        }
    }

    /// The signal this cause would end a process with.
    pub fn signal(&self) -> i32 {
        match self {
            Cause::Sent { signal, .. } | Cause::Kernel { signal } | Cause::Psmon { signal } => {
                *signal
            }
            Cause::Oom { .. } => 9,
        }
    }

    /// Whether it explains an exit with `status`: a death by this signal.
    pub fn explains(&self, status: ExitStatus) -> bool {
        matches!(status, ExitStatus::Signal { signal, .. } if signal == self.signal())
    }

    /// The words of a Down message, for a death with `status`:
    /// `signal 9 from pid 4242 'kill' uid 1000, parent 'bash' pid 4100`.
    pub fn describe(&self, status: ExitStatus) -> String {
        let core = matches!(
            status,
            ExitStatus::Signal {
                core_dumped: true,
                ..
            }
        );
        let core = if core { ", core dumped" } else { "" };
        match self {
            Cause::Sent { signal, sender } => {
                let mut text = format!(
                    "signal {signal} from pid {} '{}' uid {}",
                    sender.pid, sender.comm, sender.uid
                );
                if let Some((pid, comm)) = &sender.parent {
                    text.push_str(&format!(", parent '{comm}' pid {pid}"));
                }
                text.push_str(core);
                text
            }
            Cause::Kernel { signal } => format!("{}{core}", signal_name(*signal)),
            Cause::Oom { cgroup, .. } => match cgroup {
                Some(c) => format!("killed by the OOM killer: memory cgroup {c}"),
                None => "killed by the OOM killer".to_string(),
            },
            Cause::Psmon { signal } => format!("signal {signal} from psmon"),
        }
    }

    /// The short kind for logs and the environment: `signal`, `kernel`,
    /// `oom`, `psmon`.
    pub fn kind(&self) -> &'static str {
        match self {
            Cause::Sent { .. } => "signal",
            Cause::Kernel { .. } => "kernel",
            Cause::Oom { .. } => "oom",
            Cause::Psmon { .. } => "psmon",
        }
    }

    /// Who sent it, when a process did.
    pub fn sender(&self) -> Option<&Sender> {
        match self {
            Cause::Sent { sender, .. } => Some(sender),
            _ => None,
        }
    }
}

/// `SIGSEGV`, or `signal N` for one without a common name.
pub fn signal_name(signal: i32) -> String {
    let name = match signal {
        1 => "SIGHUP",
        2 => "SIGINT",
        3 => "SIGQUIT",
        4 => "SIGILL",
        5 => "SIGTRAP",
        6 => "SIGABRT",
        7 => "SIGBUS",
        8 => "SIGFPE",
        9 => "SIGKILL",
        10 => "SIGUSR1",
        11 => "SIGSEGV",
        12 => "SIGUSR2",
        13 => "SIGPIPE",
        14 => "SIGALRM",
        15 => "SIGTERM",
        24 => "SIGXCPU",
        25 => "SIGXFSZ",
        31 => "SIGSYS",
        _ => return format!("signal {signal}"),
    };
    name.to_string()
}

/// The memory cgroup of process `tgid`, from `/proc/PID/cgroup`: the v1
/// memory controller's line if there is one, else the v2 line.
pub fn memory_cgroup(tgid: u32) -> Option<String> {
    cgroup_of(&crate::proc::cgroups(tgid)?)
}

/// The path of the memory cgroup whose directory has inode number `id`
/// (what the kernel program read at the OOM kill, while the victim still
/// lived), relative to the hierarchy's mount: found by walking the
/// hierarchy that has the memory controller (v1 or v2, from mountinfo).
pub fn memory_cgroup_by_id(id: u64) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let mountinfo = crate::proc::mountinfo()?;
    let mut roots = Vec::new();
    for line in mountinfo.lines() {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let Some(mount) = left.split(' ').nth(4) else {
            continue;
        };
        let mut fs = right.split(' ');
        let (kind, opts) = (fs.next().unwrap_or(""), fs.nth(1).unwrap_or(""));
        let memory_v1 = kind == "cgroup" && opts.split(',').any(|o| o == "memory");
        if memory_v1 || kind == "cgroup2" {
            roots.push(std::path::PathBuf::from(mount));
        }
    }
    for root in roots {
        let mut stack = vec![(root.clone(), 0)];
        let mut seen = 0;
        while let Some((dir, depth)) = stack.pop() {
            seen += 1;
            if seen > 100_000 {
                break;
            }
            if std::fs::metadata(&dir).is_ok_and(|m| m.ino() == id) {
                let rel = dir.strip_prefix(&root).ok()?;
                return Some(format!("/{}", rel.display()));
            }
            if depth >= 16 {
                continue;
            }
            for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    stack.push((e.path(), depth + 1));
                }
            }
        }
    }
    None
}

fn cgroup_of(text: &str) -> Option<String> {
    let mut v2 = None;
    for line in text.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(id), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        if controllers.split(',').any(|c| c == "memory") {
            return Some(path.to_string());
        }
        if id == "0" && controllers.is_empty() {
            v2 = Some(path.to_string());
        }
    }
    v2
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sender(pid: u32) -> Sender {
        Sender {
            pid,
            uid: 1000,
            comm: "kill".into(),
            parent: Some((4100, "bash".into())),
            grandparent: None,
        }
    }

    #[test]
    fn tells_who_killed() {
        let sent = Cause::of_signal(812, 9, Some(0), sender(4242), 1);
        assert_eq!(
            sent.describe(ExitStatus::Signal {
                signal: 9,
                core_dumped: false
            }),
            "signal 9 from pid 4242 'kill' uid 1000, parent 'bash' pid 4100"
        );
        let fault = Cause::of_signal(812, 11, Some(1), sender(812), 1);
        assert_eq!(
            fault.describe(ExitStatus::Signal {
                signal: 11,
                core_dumped: true
            }),
            "SIGSEGV, core dumped"
        );
        // A SIGSEGV a process sends itself with kill() is not a fault.
        assert_eq!(
            Cause::of_signal(812, 11, Some(0), sender(812), 1).kind(),
            "signal"
        );
        assert_eq!(
            Cause::of_signal(812, 15, None, sender(1), 1).kind(),
            "psmon"
        );
        assert!(sent.explains(ExitStatus::Signal {
            signal: 9,
            core_dumped: false
        }));
        assert!(!sent.explains(ExitStatus::Code(0)));
    }

    #[test]
    fn finds_the_memory_cgroup_on_v1_and_v2() {
        let hybrid = "12:pids:/x\n5:memory:/psmon-test/oom\n0::/user.slice\n";
        assert_eq!(cgroup_of(hybrid).as_deref(), Some("/psmon-test/oom"));
        let v2 = "0::/system.slice/sshd.service\n";
        assert_eq!(cgroup_of(v2).as_deref(), Some("/system.slice/sshd.service"));
        assert_eq!(cgroup_of("garbage"), None);
    }
}
