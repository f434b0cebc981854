//! What systemd hears from a `Type=notify` psmon besides the watchdog
//! keep-alive: READY=1 once the source is open and the first scan is done
//! (and again after a reload), and STATUS= with the source and how many
//! entries are up.

use super::Supervisor;

impl Supervisor {
    /// `STATUS=source ebpf; 12 of 12 up`.
    pub(super) fn systemd_status(&self) -> libsystemd::daemon::NotifyState {
        let (up, all) = self.monitor.up_count();
        let source = self
            .source
            .as_ref()
            .map_or("none (scans only)".to_string(), |s| s.kind.to_string());
        libsystemd::daemon::NotifyState::Status(format!("source {source}; {up} of {all} up"))
    }

    /// READY=1 (when `ready`) with the status.
    pub(super) fn tell_systemd(&self, ready: bool) {
        let mut states = vec![self.systemd_status()];
        if ready {
            states.insert(0, libsystemd::daemon::NotifyState::Ready);
        }
        if let Err(e) = libsystemd::daemon::notify(false, &states) {
            tracing::warn!("cannot notify systemd: {e}");
        }
    }
}
