//! Turning SIGINT and SIGTERM into cancellation of a [`CancellationToken`],
//! so every task shuts down the same way.

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
