//! Why the `ebpf` source could not be used, told so that the operator
//! knows what to do: a build without the programs, a kernel without BTF,
//! a missing privilege (an EPERM, by its errno), a verifier's rejection.

use std::{fmt, path::PathBuf};

use aya::Ebpf;

use super::super::btf;

/// Why the `ebpf` source could not be used.
#[derive(Debug)]
pub enum Refusal {
    /// This binary was built without the programs.
    NotBuilt {
        /// Why the build left them out.
        why: String,
    },
    /// The programs see host pids; psmon's `/proc` shows another namespace's.
    NotInitPidNamespace,
    /// The kernel has no BTF.
    NoBtf {
        /// Where it was looked for.
        path: PathBuf,
    },
    /// The kernel struct offsets could not be read from BTF.
    Offsets {
        /// Why.
        source: btf::BtfError,
    },
    /// A missing privilege (an EPERM).
    NotPermitted {
        /// What was refused.
        what: String,
    },
    /// The verifier rejected a program.
    Verifier {
        /// The program.
        program: String,
        /// The verifier's log.
        log: String,
    },
    /// The embedded object lacks a program or a map: a broken build.
    Missing {
        /// What is missing.
        what: String,
    },
    /// The kernel refused something else.
    Kernel {
        /// What was being done.
        what: String,
        /// The kernel's error.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl std::error::Error for Refusal {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Refusal::Offsets { source } => Some(source),
            Refusal::Kernel { source, .. } => Some(source.as_ref()),
            _ => None,
        }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::NotBuilt { why } => write!(
                f,
                "the eBPF programs are not built into this binary ({why}); \
                 run `cargo xtask setup` and rebuild psmon"
            ),
            Refusal::NotInitPidNamespace => f.write_str(
                "psmon runs inside a PID namespace (a container, `unshare --pid`), where the \
                 kernel programs' pids would match nothing in its /proc; run it on the host \
                 to use ebpf",
            ),
            Refusal::NoBtf { path } => write!(
                f,
                "this kernel has no BTF ({} is missing; it needs CONFIG_DEBUG_INFO_BTF=y)",
                path.display()
            ),
            Refusal::Offsets { source } => {
                write!(f, "cannot resolve kernel struct offsets from BTF: {source}")
            }
            Refusal::NotPermitted { what } => write!(
                f,
                "{what} was refused: run as root (or with CAP_BPF and CAP_PERFMON)"
            ),
            Refusal::Verifier { program, log } => write!(
                f,
                "the kernel verifier rejected `{program}`; verifier log:\n{log}"
            ),
            Refusal::Missing { what } => write!(
                f,
                "the embedded eBPF object has no {what}; rebuild psmon (`cargo xtask setup` first)"
            ),
            // The kernel's words are often in the causes: all of them.
            Refusal::Kernel { what, source } => {
                write!(f, "{what} failed: {source}")?;
                let mut cause = source.source();
                while let Some(c) = cause {
                    write!(f, ": {c}")?;
                    cause = c.source();
                }
                Ok(())
            }
        }
    }
}

pub(super) fn take<T, E: Into<Box<dyn std::error::Error + Send + Sync>>>(
    ebpf: &mut Ebpf,
    name: &str,
    convert: impl FnOnce(aya::maps::Map) -> Result<T, E>,
) -> Result<T, Refusal> {
    let map = ebpf.take_map(name).ok_or_else(|| Refusal::Missing {
        what: format!("map `{name}`"),
    })?;
    convert(map).map_err(|e| Refusal::Kernel {
        what: format!("opening map `{name}`"),
        source: e.into(),
    })
}

/// What `error` (while doing `what`) means: not permitted when an EPERM
/// is among its causes, else the kernel's refusal.
pub(super) fn refusal(
    what: &str,
    error: impl std::error::Error + Send + Sync + 'static,
) -> Refusal {
    let mut eperm = false;
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(&error);
    while let Some(c) = cause {
        if let Some(io) = c.downcast_ref::<std::io::Error>() {
            eperm |= io.raw_os_error() == Some(libc::EPERM);
        }
        cause = c.source();
    }
    match eperm {
        true => Refusal::NotPermitted { what: what.into() },
        false => Refusal::Kernel {
            what: what.into(),
            source: Box::new(error),
        },
    }
}
