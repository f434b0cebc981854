//! Faults a test can inject into a running psmon, built only with the
//! `fault-injection` feature (`cargo xtask test` turns it on): the control
//! socket's hidden `fault` request makes the running sources of the named
//! kinds go deaf — an ebpf source unloads its programs (they are detached
//! from the tracepoints), a netlink source leaves the proc connector's
//! group — as when someone else detaches a program or a subscription
//! silently stops. With `sticky`, sources of those kinds opened later go
//! deaf too, as soon as they run. Without the feature, [`Deafness::come`]
//! never completes.

use super::SourceKind;

#[cfg(feature = "fault-injection")]
mod switch {
    use std::sync::{LazyLock, Mutex};

    use super::SourceKind;

    #[derive(Default)]
    struct Fault {
        deaf: Vec<SourceKind>,
        sticky: bool,
        /// Bumped by every request: a source started before it is running now.
        epoch: u64,
        /// The sources that went deaf, with the request's epoch then.
        went: Vec<(SourceKind, u64)>,
    }

    static FAULT: Mutex<Fault> = Mutex::new(Fault {
        deaf: Vec::new(),
        sticky: false,
        epoch: 0,
        went: Vec::new(),
    });
    static CHANGED: LazyLock<tokio::sync::Notify> = LazyLock::new(tokio::sync::Notify::new);
    static WENT: LazyLock<tokio::sync::Notify> = LazyLock::new(tokio::sync::Notify::new);

    /// Sources of `kinds` running now go deaf, and with `sticky` those
    /// opened later; an empty list stops later ones going deaf. Returns
    /// the request's epoch, for [`went_deaf`].
    pub fn set_deaf(kinds: &[SourceKind], sticky: bool) -> u64 {
        let mut fault = FAULT.lock().unwrap();
        fault.deaf = kinds.to_vec();
        fault.sticky = sticky;
        fault.epoch += 1;
        CHANGED.notify_waiters();
        fault.epoch
    }

    /// A running source of `kind` has gone deaf.
    pub fn went(kind: SourceKind) {
        let mut fault = FAULT.lock().unwrap();
        let epoch = fault.epoch;
        fault.went.push((kind, epoch));
        WENT.notify_waiters();
    }

    /// Which of `kinds` a running source of went deaf for the request of
    /// `epoch`, waiting up to `limit` for them all (a kind with no source
    /// running never does).
    pub async fn went_deaf(
        kinds: &[SourceKind],
        epoch: u64,
        limit: std::time::Duration,
    ) -> Vec<SourceKind> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let notified = WENT.notified();
            let went: Vec<SourceKind> = {
                let fault = FAULT.lock().unwrap();
                let done = |k: &&SourceKind| fault.went.iter().any(|(w, e)| w == *k && *e >= epoch);
                kinds.iter().filter(done).copied().collect()
            };
            if went.len() == kinds.len()
                || tokio::time::timeout_at(deadline, notified).await.is_err()
            {
                return went;
            }
        }
    }

    pub fn deaf_from_the_start(kind: SourceKind) -> bool {
        let fault = FAULT.lock().unwrap();
        fault.sticky && fault.deaf.contains(&kind)
    }

    pub fn epoch() -> u64 {
        FAULT.lock().unwrap().epoch
    }

    pub async fn deafened(kind: SourceKind, started: u64) {
        loop {
            let changed = CHANGED.notified();
            {
                let fault = FAULT.lock().unwrap();
                let named = fault.deaf.contains(&kind);
                if named && (fault.sticky || fault.epoch > started) {
                    return;
                }
            }
            changed.await;
        }
    }
}

#[cfg(feature = "fault-injection")]
pub use switch::{set_deaf, went_deaf};

/// Whether a source of `kind` opened now is deaf from the start (before
/// it runs: a canary may exit between its opening and its first read).
pub fn deaf_from_the_start(kind: SourceKind) -> bool {
    #[cfg(feature = "fault-injection")]
    return switch::deaf_from_the_start(kind);
    #[cfg(not(feature = "fault-injection"))]
    {
        let _ = kind;
        false
    }
}

/// When a running source of one kind is to go deaf.
pub struct Deafness {
    kind: SourceKind,
    #[cfg(feature = "fault-injection")]
    started: u64,
}

impl Deafness {
    /// For a source of `kind` that starts running now.
    pub fn of(kind: SourceKind) -> Self {
        Deafness {
            kind,
            #[cfg(feature = "fault-injection")]
            started: switch::epoch(),
        }
    }

    /// The source has gone deaf (a test waits for it).
    pub fn went(&self) {
        #[cfg(feature = "fault-injection")]
        switch::went(self.kind);
    }

    /// Completes when the source is to go deaf.
    pub async fn come(&self) {
        #[cfg(feature = "fault-injection")]
        switch::deafened(self.kind, self.started).await;
        #[cfg(not(feature = "fault-injection"))]
        {
            let _ = self.kind;
            std::future::pending::<()>().await;
        }
    }
}
