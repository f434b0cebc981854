//! Keeps an event source open for the daemon: runs it, reopens it when it
//! fails, and replaces it when the supervisor says it missed its
//! self-checks ([`crate::self_check`]) — first by a reopened source of the
//! same kind, then (with `--source auto`) by the next kind, ebpf → netlink
//! → poll. A candidate is taken only once it has passed a self-check of
//! its own, run on a private channel beside the source still open, so a
//! replacement never leaves psmon deafer than it was. Once it runs on a
//! worse source than it started with, it tries the better ones again,
//! backing off, and returns to the first that passes.
//!
//! What it does is said to the consumer as [`Report`]s, in order.

use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{Handle, Source, SourceChoice, SourceError, SourceKind, SourceOptions};
use crate::{
    event::{EventKind, ProcEvent},
    self_check::{Canary, DEADLINE},
};

/// What the keeper is asked.
#[derive(Debug)]
pub enum Order {
    /// The open source of `kind` missed its self-checks (`why`): replace it.
    Replace {
        /// The kind of the source that missed.
        kind: SourceKind,
        /// What it missed.
        why: String,
    },
}

/// What the keeper tells the consumer of events.
pub enum Report {
    /// A source is open from now on; `why` it replaced the previous one.
    Opened {
        /// What its consumer may rely on.
        handle: Handle,
        /// Why it replaced the previous one, if it did.
        why: Option<String>,
    },
    /// The source stopped with this error; it is being reopened.
    Failed(String),
    /// A replacement was looked for and none passed: the source stays.
    Kept(String),
}

/// The longest wait between attempts to return to a better source.
const MAX_RETURN_WAIT: Duration = Duration::from_secs(3600);

/// Keeps one source open: reopens it when it fails, replaces one that
/// misses its self-checks, and returns to a better kind when one passes.
pub struct Keeper<C> {
    /// The kind the operator chose.
    pub choice: SourceChoice,
    /// What every source is opened with.
    pub options: SourceOptions,
    /// How long to wait before reopening a failed source, and before the
    /// first attempt to return to a better one.
    pub retry_interval: Duration,
    /// Where the open source's events go.
    pub events: mpsc::Sender<ProcEvent>,
    /// Where what the keeper did is reported.
    pub reports: mpsc::Sender<C>,
    /// Orders from the supervisor (replace a source that went deaf).
    pub orders: mpsc::Receiver<Order>,
    /// Starts the canaries of candidates' self-checks; `None`: candidates
    /// are taken unchecked.
    pub canary: Option<Canary>,
    /// Cancelled at shutdown.
    pub token: CancellationToken,
}

impl<C: From<Report> + Send + 'static> Keeper<C> {
    /// Runs `first` and whatever replaces it until cancelled.
    pub async fn keep(mut self, first: Source) {
        // Returns aim no higher than what opened at start: a source refused
        // then (no BTF, say) is not retried.
        let best = first.kind();
        let mut source = first;
        let mut why = None;
        let mut return_wait = self.retry_interval;
        loop {
            let kind = source.kind();
            self.report(Report::Opened {
                handle: source.handle(),
                why: why.take(),
            })
            .await;
            let running = self.token.child_token();
            // A task of its own: it goes on reading while candidates are
            // tried below.
            let mut run = tokio::spawn(source.run(self.events.clone(), running.clone()));
            let better = self.kinds_between(best, kind);
            let mut return_at = tokio::time::Instant::now() + return_wait;
            let next = loop {
                tokio::select! {
                    _ = self.token.cancelled() => {
                        // Closed before the daemon goes: netlink unsubscribes,
                        // the programs detach.
                        let _ = run.await;
                        return;
                    }
                    result = &mut run => {
                        if self.token.is_cancelled() {
                            return;
                        }
                        let why = match result {
                            Ok(Ok(())) => "it ended".to_string(),
                            Ok(Err(e)) => format!("{e:#}"),
                            Err(e) => format!("its task failed: {e}"),
                        };
                        self.report(Report::Failed(why)).await;
                        match self.reopen().await {
                            Some(next) => break next,
                            None => return,
                        }
                    }
                    Some(Order::Replace { kind: missed, why: said }) = self.orders.recv() => {
                        if missed != kind {
                            continue; // about a source already replaced
                        }
                        match self.replacement(kind, &said).await {
                            Ok((next, because)) => {
                                running.cancel();
                                let _ = (&mut run).await;
                                why = Some(because);
                                break next;
                            }
                            Err(refused) => self.report(Report::Kept(refused)).await,
                        }
                    }
                    _ = tokio::time::sleep_until(return_at), if !better.is_empty() => {
                        match self.first_passing(&better).await {
                            Some(next) => {
                                running.cancel();
                                let _ = (&mut run).await;
                                why = Some(format!(
                                    "the {} source passes its self-check again; leaving {kind}",
                                    next.kind()
                                ));
                                return_wait = self.retry_interval;
                                break next;
                            }
                            None => {
                                return_wait = (return_wait * 2).min(MAX_RETURN_WAIT);
                                return_at = tokio::time::Instant::now() + return_wait;
                            }
                        }
                    }
                }
            };
            source = next;
        }
    }

    async fn report(&self, report: Report) {
        let _ = self.reports.send(C::from(report)).await;
    }

    /// After a failure: opens the chosen source again every retry interval
    /// (the consumer's scans cover the gap). `None` when cancelled.
    async fn reopen(&self) -> Option<Source> {
        loop {
            tokio::select! {
                _ = self.token.cancelled() => return None,
                _ = tokio::time::sleep(self.retry_interval) => {}
            }
            match super::open(self.choice, &self.options) {
                Ok(opened) => return Some(opened.source),
                Err(e) => tracing::warn!("reopening the event source failed: {e:#}"),
            }
        }
    }

    /// The kinds better than `kind`, no better than `best`, best first.
    fn kinds_between(&self, best: SourceKind, kind: SourceKind) -> Vec<SourceKind> {
        ORDER
            .into_iter()
            .skip_while(|k| *k != best)
            .take_while(|k| *k != kind)
            .collect()
    }

    /// What replaces the open source of `kind`: a reopened one of the same
    /// kind, else (auto) the next kind that passes; poll needs no check.
    /// Says why, or why nothing does.
    async fn replacement(&self, kind: SourceKind, why: &str) -> Result<(Source, String), String> {
        let mut refused = Vec::new();
        let candidates: Vec<SourceKind> = match self.choice {
            SourceChoice::Auto => ORDER.into_iter().skip_while(|k| *k != kind).collect(),
            _ => vec![kind],
        };
        for candidate in candidates {
            match self.trial(candidate).await {
                Ok(source) => {
                    let because = if candidate == kind {
                        format!(
                            "the {kind} source {why}: reopened, and the new one passed its self-check"
                        )
                    } else {
                        format!(
                            "the {kind} source {why}; falling back to {candidate}{}",
                            match candidate {
                                SourceKind::Poll => String::new(),
                                _ => ", which passed its self-check".to_string(),
                            }
                        )
                    };
                    let because = match refused.is_empty() {
                        true => because,
                        false => format!("{because} ({})", refused.join("; ")),
                    };
                    return Ok((source, because));
                }
                Err(e) => refused.push(format!("{candidate}: {e}")),
            }
        }
        Err(format!(
            "the {kind} source {why}, and no replacement passed its self-check ({}); keeping it, the scans cover it",
            refused.join("; ")
        ))
    }

    /// The first of `kinds` that opens and passes its self-check.
    async fn first_passing(&self, kinds: &[SourceKind]) -> Option<Source> {
        for kind in kinds {
            if let Ok(source) = self.trial(*kind).await {
                return Some(source);
            }
        }
        None
    }

    /// Opens a source of `kind` and checks it: run on a private channel, it
    /// must report a canary's exit within the deadline. A source that
    /// passes is opened afresh (the checked one's events went nowhere).
    async fn trial(&self, kind: SourceKind) -> Result<Source, TrialFailed> {
        let open = || {
            super::open(choice_of(kind), &self.options)
                .map(|o| o.source)
                .map_err(TrialFailed::Open)
        };
        let mut candidate = open()?;
        let Some(canary) = self.canary.as_ref().filter(|_| kind != SourceKind::Poll) else {
            return Ok(candidate);
        };
        let mut handle = candidate.handle();
        if let Some(filter) = handle.filter.as_mut() {
            // The canary is psmon's child: the kernel filter passes it.
            filter.watch_tgid(std::process::id());
        }
        let (tx, mut rx) = mpsc::channel(1024);
        let stop = self.token.child_token();
        let run = tokio::spawn(candidate.run(tx, stop.clone()));
        let fired = canary.fire();
        let seen = match &fired {
            Ok(pid) => {
                let pid = *pid;
                tokio::time::timeout(DEADLINE, async {
                    while let Some(event) = rx.recv().await {
                        if matches!(event.kind, EventKind::Exit { ref process, .. } if process.tgid == pid)
                        {
                            return true;
                        }
                    }
                    false
                })
                .await
                .unwrap_or(false)
            }
            Err(_) => false,
        };
        stop.cancel();
        drop(rx);
        let _ = run.await;
        drop(handle);
        match fired {
            Ok(pid) => canary.reap(pid),
            Err(e) => return Err(TrialFailed::NoCanary(e)),
        }
        match seen {
            true => open(),
            false => Err(TrialFailed::Deaf),
        }
    }
}

/// Why a source on trial was not taken.
#[derive(Debug, thiserror::Error)]
enum TrialFailed {
    #[error("{0:#}")]
    Open(#[source] SourceError),
    #[error("no canary could be started: {0}")]
    NoCanary(#[source] std::io::Error),
    #[error("missed its self-check too (no exit event within {} s)", DEADLINE.as_secs())]
    Deaf,
}

/// The sources, best first.
const ORDER: [SourceKind; 3] = [SourceKind::Ebpf, SourceKind::Netlink, SourceKind::Poll];

fn choice_of(kind: SourceKind) -> SourceChoice {
    match kind {
        SourceKind::Ebpf => SourceChoice::Ebpf,
        SourceKind::Netlink => SourceChoice::Netlink,
        SourceKind::Poll => SourceChoice::Poll,
    }
}
