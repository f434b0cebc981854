//! What operators ask through the control socket: status, pause, resume,
//! reload of one pfile or all, and the recovery drill (`psmon test`).

use std::{path::PathBuf, time::Duration};

use serde_json::json;
use tokio::sync::oneshot;

use super::{Back, Supervisor};
use crate::{
    audit::Outcome,
    clock::Time,
    config::{Config, Pfile},
    control::{Asked, ControlRequest, Reply},
    facts::EntryId,
    monitor::{Input, Notice},
    policy::Action,
    scan::Matcher,
};

/// A recovery drill under way.
pub(super) struct Drill {
    entry: EntryId,
    path: PathBuf,
    killed: u32,
    killed_at: Time,
    down_at: Option<Time>,
    deadline: Time,
    last_failure: Option<String>,
    reply: oneshot::Sender<Reply>,
}

/// A refusal whose client should exit 2 (the request cannot be carried
/// out as asked), not 1.
pub(super) fn usage(why: String) -> Reply {
    Err(format!("usage: {why}"))
}

/// A configuration read for a reload, with what matching its entries
/// needs (each entry's file resolved, scripts told from programs): built
/// where the files were read, on a blocking thread, since resolving is
/// file system work that would hold up events (a third of a 10,000-entry
/// reload's time on the event thread, measured with perf).
pub struct Prepared {
    pub(super) config: Config,
    pub(super) matcher: Matcher,
}

impl Prepared {
    /// A configuration with what the supervisor derives from it.
    pub fn new(config: Config) -> Self {
        let matcher = Matcher::new(config.entries().map(|(_, e)| e));
        Prepared { config, matcher }
    }
}

impl Supervisor {
    pub(super) fn on_asked(&mut self, asked: Asked) {
        let Asked {
            command,
            peer,
            refused,
            reply,
        } = asked;
        let audited = command
            .audited()
            .map(|(action, pfile)| (action, pfile.map(str::to_string)));
        let reply = match (audited, peer) {
            (Some((action, pfile)), Some(who)) => {
                if let Some(why) = refused {
                    self.audit(who, action, pfile, Outcome::Refused(why.clone()));
                    let _ = reply.send(Err(why));
                    return;
                }
                self.audited_reply(who, action, pfile, reply)
            }
            _ => reply,
        };
        let answer = match command {
            ControlRequest::Ping => Ok(json!({
                "pid": std::process::id(),
                "source": self.source.as_ref().map(|s| s.kind.to_string()),
                "source_down": self.source_down,
            })),
            ControlRequest::Status { pfile } => return self.reply_status(pfile.as_deref(), reply),
            ControlRequest::Pause { pfile } => self.pause(&pfile, true),
            ControlRequest::Resume { pfile } => self.pause(&pfile, false),
            ControlRequest::Reload { pfile } => return self.reload(pfile.as_deref(), reply),
            ControlRequest::Test {
                pfile,
                path,
                signal,
            } => return self.drill(&pfile, path.as_deref(), signal, reply),
            ControlRequest::ClearFailover { pfile } => {
                return self.clear_failover(pfile.as_deref(), reply);
            }
            ControlRequest::Audit { since } => self.audit_reply(since),
            #[cfg(feature = "fault-injection")]
            ControlRequest::Fault { deaf, sticky } => return fault(&deaf, sticky, reply),
        };
        let _ = reply.send(answer);
    }

    /// The configured pfile an operator means ([`Config::pfile_named`]).
    pub(super) fn pfile_named(&self, name: &str) -> Result<&Pfile, String> {
        self.config.pfile_named(name).ok_or_else(|| {
            let known: Vec<&str> = self.config.pfiles.iter().map(|p| p.name.as_str()).collect();
            format!(
                "no pfile named '{name}' is configured (known: {})",
                known.join(", ")
            )
        })
    }

    fn pause(&mut self, name: &str, pause: bool) -> Reply {
        let pfile = match self.pfile_named(name) {
            Ok(p) => p.name.clone(),
            Err(e) => return usage(e),
        };
        let entries = self.monitor.entries_of(&pfile).len();
        let input = if pause {
            Input::Pause {
                pfile: pfile.clone(),
            }
        } else {
            Input::Resume {
                pfile: pfile.clone(),
            }
        };
        self.feed(input);
        Ok(json!({"pfile": pfile, "entries": entries, "paused": pause}))
    }

    /// Reloads every file (as SIGHUP does) or one pfile, leaving the others
    /// as they are; a broken file is refused and the running one kept.
    fn reload(&mut self, name: Option<&str>, reply: oneshot::Sender<Reply>) {
        let load = self.load;
        let tx = self.back_tx.clone();
        match name {
            None => {
                let dir = self.conf_dir.clone();
                self.helpers.spawn(async move {
                    let loaded = tokio::task::spawn_blocking(move || {
                        Config::load_dir(&dir, load).map(Prepared::new)
                    })
                    .await;
                    let Ok(result) = loaded else { return };
                    let _ = tx.send(Back::Reloaded {
                        result: Box::new(result),
                        pfile: None,
                        reply,
                    });
                });
            }
            Some(name) => {
                let pfile = match self.pfile_named(name) {
                    Ok(p) => p.clone(),
                    Err(e) => {
                        let _ = reply.send(usage(e));
                        return;
                    }
                };
                let mut config = self.running_config();
                self.helpers.spawn(async move {
                    let file = pfile.file.clone();
                    let name = pfile.name.clone();
                    let loaded = tokio::task::spawn_blocking(move || {
                        let one = Config::load_files(std::slice::from_ref(&file), load)?;
                        // The other pfiles as they run now.
                        let fresh = one.pfiles.into_iter().find(|p| p.file == file);
                        match config.pfiles.iter_mut().find(|p| p.name == name) {
                            Some(slot) => match fresh {
                                Some(fresh) => *slot = fresh,
                                None => config.pfiles.retain(|p| p.name != name),
                            },
                            None => config.pfiles.extend(fresh),
                        }
                        Ok(Prepared::new(config))
                    })
                    .await;
                    let Ok(result) = loaded else { return };
                    let _ = tx.send(Back::Reloaded {
                        result: Box::new(result),
                        pfile: Some(pfile.name),
                        reply,
                    });
                });
            }
        }
    }

    /// The configuration running now, entries included (from the monitor).
    fn running_config(&self) -> Config {
        let mut config = self.config.clone();
        for (i, entry) in self.monitor.entries().enumerate() {
            let pfile = self.monitor.pfile(EntryId::at(i));
            if let Some(p) = config.pfiles.iter_mut().find(|p| p.name == pfile) {
                p.entries.push(entry.clone());
            }
        }
        config
    }

    /// A reload's files are read: apply them, or refuse them.
    pub(super) fn on_reloaded(
        &mut self,
        result: Result<Prepared, crate::config::ConfigErrors>,
        pfile: Option<String>,
        reply: oneshot::Sender<Reply>,
    ) {
        let answer = match result {
            Ok(prepared) => {
                if let Some(name) = &pfile {
                    self.feed(Input::Operator {
                        what: "reload",
                        pfile: name.clone(),
                    });
                }
                let entries = prepared.config.entries().count();
                let changes = self.reconfigure(prepared);
                Ok(json!({"pfile": pfile, "entries": entries, "changes": changes}))
            }
            Err(errors) => {
                let lines: Vec<String> = errors.0.iter().map(ToString::to_string).collect();
                let why = format!(
                    "the configuration has errors; the running one is kept:\n{}",
                    lines.join("\n")
                );
                self.feed(Input::ReloadFailed(errors));
                Err(why)
            }
        };
        let _ = reply.send(answer);
    }

    /// `psmon test`: kill the entry's main process and wait for its return.
    fn drill(
        &mut self,
        name: &str,
        path: Option<&str>,
        signal: i32,
        reply: oneshot::Sender<Reply>,
    ) {
        let refuse = |reply: oneshot::Sender<Reply>, why: Reply| {
            let _ = reply.send(why);
        };
        let pfile = match self.pfile_named(name) {
            Ok(p) => p.name.clone(),
            Err(e) => return refuse(reply, usage(e)),
        };
        let ids = self.monitor.entries_of(&pfile);
        let id = match path {
            Some(path) => match ids
                .iter()
                .find(|id| self.monitor.entry(**id).path == std::path::Path::new(path))
            {
                Some(id) => *id,
                None => return refuse(reply, usage(format!("pfile '{pfile}' watches no {path}"))),
            },
            None if ids.len() == 1 => ids[0],
            None => {
                let paths: Vec<String> = ids
                    .iter()
                    .map(|id| self.monitor.entry(*id).path.display().to_string())
                    .collect();
                return refuse(
                    reply,
                    usage(format!(
                        "pfile '{pfile}' watches {} processes; name one: {}",
                        ids.len(),
                        paths.join(", ")
                    )),
                );
            }
        };
        let entry = self.monitor.entry(id).clone();
        if self.monitor.paused(id) {
            return refuse(
                reply,
                usage(format!("pfile '{pfile}' is paused: resume it first")),
            );
        }
        if !entry.restarts() {
            return refuse(
                reply,
                usage(format!(
                    "{} is report-only (no restart command or retry 0): psmon would not bring it back",
                    entry.path.display()
                )),
            );
        }
        if self.drills.iter().any(|d| d.entry == id) {
            return refuse(
                reply,
                usage(format!(
                    "a drill of {} is already under way",
                    entry.path.display()
                )),
            );
        }
        let Some((pid, _)) = self.monitor.main_instance(id) else {
            return refuse(
                reply,
                Err(format!(
                    "{} is not running now: there is nothing to kill",
                    entry.path.display()
                )),
            );
        };
        let Ok(sig) = nix::sys::signal::Signal::try_from(signal) else {
            return refuse(reply, usage(format!("{signal} is not a signal")));
        };
        self.feed(Input::Drill { entry: id });
        let killed_at = self.clock.now();
        if let Err(e) = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), sig) {
            self.feed(Input::DrillEnd { entry: id });
            return refuse(reply, Err(format!("cannot kill pid {pid}: {e}")));
        }
        // Its limits: the longest a restart may take, a few times over (back-offs included).
        let limit = entry.restart_timeout + entry.start_wait + entry.start_secs + entry.backoff_max;
        self.drills.push(Drill {
            entry: id,
            path: entry.path.clone(),
            killed: pid,
            killed_at,
            down_at: None,
            deadline: killed_at + limit + Duration::from_secs(2),
            last_failure: None,
            reply,
        });
    }

    /// Follows drills through the monitor's notices.
    pub(super) fn drill_notice(&mut self, notice: &Notice) {
        let Notice::Policy { entry, action, .. } = notice else {
            return;
        };
        let Some(i) = self.drills.iter().position(|d| d.entry == *entry) else {
            return;
        };
        let now = self.clock.now();
        let drill = &mut self.drills[i];
        match action {
            Action::ReportDown { .. } if drill.down_at.is_none() => drill.down_at = Some(now),
            Action::ReportSetPidFail { why } => {
                drill.last_failure = Some(crate::report::failure(self.monitor.entry(*entry), *why));
            }
            Action::ReportUp { pid, .. } if drill.down_at.is_some() => {
                let drill = self.drills.swap_remove(i);
                let ms = |t: Time| t.saturating_duration_since(drill.killed_at).as_secs_f64() * 1e3;
                let result = json!({
                    "path": drill.path,
                    "killed": drill.killed,
                    "pid": pid,
                    "detection_ms": drill.down_at.map(ms),
                    "recovery_ms": ms(now),
                });
                let _ = drill.reply.send(Ok(result));
                self.feed(Input::DrillEnd { entry: *entry });
            }
            Action::ReportRetryOver { .. } => {
                let drill = self.drills.swap_remove(i);
                let why = format!(
                    "{} did not recover: its retries are spent{}",
                    drill.path.display(),
                    drill
                        .last_failure
                        .map(|f| format!(" (last: {f})"))
                        .unwrap_or_default()
                );
                let _ = drill.reply.send(Err(why));
                self.feed(Input::DrillEnd { entry: *entry });
            }
            _ => {}
        }
    }

    /// Drills past their limits fail.
    pub(super) fn expire_drills(&mut self, now: Time) {
        while let Some(i) = self.drills.iter().position(|d| now >= d.deadline) {
            let drill = self.drills.swap_remove(i);
            let waited = now.saturating_duration_since(drill.killed_at);
            let why = format!(
                "{} did not recover within {}{}",
                drill.path.display(),
                crate::report::duration(waited),
                drill
                    .last_failure
                    .map(|f| format!(" (last: {f})"))
                    .unwrap_or_default()
            );
            let _ = drill.reply.send(Err(why));
            self.feed(Input::DrillEnd { entry: drill.entry });
        }
    }

    /// When the next drill gives up.
    pub(super) fn drill_deadline(&self) -> Option<Time> {
        self.drills.iter().map(|d| d.deadline).min()
    }
}

/// The hidden `fault` request of test builds ([`crate::source::fault`]),
/// answered once the running sources it names have gone deaf (or 2 s have
/// passed): the test's next process must not be heard.
#[cfg(feature = "fault-injection")]
fn fault(deaf: &[String], sticky: bool, reply: oneshot::Sender<Reply>) {
    use crate::source::SourceKind;
    let kinds = deaf
        .iter()
        .map(|k| match k.as_str() {
            "ebpf" => Ok(SourceKind::Ebpf),
            "netlink" => Ok(SourceKind::Netlink),
            other => Err(format!("fault: unknown source `{other}` (ebpf or netlink)")),
        })
        .collect::<Result<Vec<_>, _>>();
    let kinds = match kinds {
        Ok(kinds) => kinds,
        Err(why) => {
            let _ = reply.send(Err(why));
            return;
        }
    };
    let epoch = crate::source::fault::set_deaf(&kinds, sticky);
    let deaf = deaf.to_vec();
    tokio::spawn(async move {
        let went = crate::source::fault::went_deaf(&kinds, epoch, Duration::from_secs(2)).await;
        let went: Vec<String> = went.iter().map(|k| k.to_string()).collect();
        let _ = reply.send(Ok(
            json!({ "deaf": deaf, "sticky": sticky, "went_deaf": went }),
        ));
    });
}
