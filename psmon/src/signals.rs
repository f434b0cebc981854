//! Turning SIGINT and SIGTERM into cancellation of a [`CancellationToken`],
//! so every task shuts down the same way; and who sent the last SIGHUP
//! (its siginfo, which tokio's signal streams do not carry), for the
//! audit trail.

use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;

/// Cancels `token` on the first SIGINT or SIGTERM.
pub fn cancel_on_signals(token: CancellationToken) -> std::io::Result<()> {
    let mut int = signal(SignalKind::interrupt())?;
    let mut term = signal(SignalKind::terminate())?;
    tokio::spawn(async move {
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
            _ = token.cancelled() => return,
        }
        tracing::debug!("signal received, shutting down");
        token.cancel();
    });
    Ok(())
}

/// The last SIGHUP's sender: uid in the high half, pid in the low; 0: none.
static LAST_HUP: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Remembers each SIGHUP's sender (beside tokio's own handler, which the
/// same registry runs too).
pub fn remember_sighup_senders() -> std::io::Result<()> {
    let record = |info: &libc::siginfo_t| {
        // SAFETY: for SIGHUP sent by kill(2) the kernel fills si_pid and
        // si_uid (SI_USER); reading them is reading two integers.
        let (pid, uid) = unsafe { (info.si_pid(), info.si_uid()) };
        let packed = (u64::from(uid) << 32) | u64::from(pid as u32);
        LAST_HUP.store(packed, std::sync::atomic::Ordering::Relaxed);
    };
    // SAFETY: the action only stores into an atomic, which is
    // async-signal-safe.
    unsafe { signal_hook_registry::register_sigaction(libc::SIGHUP, record) }?;
    Ok(())
}

/// The sender (uid, pid) of the SIGHUP last received, if one was seen.
pub fn last_sighup_sender() -> Option<(u32, u32)> {
    let packed = LAST_HUP.swap(0, std::sync::atomic::Ordering::Relaxed);
    (packed != 0).then_some(((packed >> 32) as u32, packed as u32))
}
