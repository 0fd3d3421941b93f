//! systemd: readiness and reload notifications, the `STATUS=` line and
//! the watchdog.

use std::time::{Duration, Instant};

use sd_notify::NotifyState;

use super::Daemon;

/// Notifies systemd when it started us (`NOTIFY_SOCKET`; without it this
/// does nothing).
pub(super) fn tell_systemd(states: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::warn!("cannot notify systemd: {e}");
    }
}

/// How often `STATUS=` is refreshed at most: each refresh asks every
/// datapath for its state.
const STATUS_LINE_EVERY: Duration = Duration::from_secs(1);

/// The last `STATUS=` sent, and when the next may go.
pub(super) struct StatusLine {
    sent: String,
    next: Instant,
    /// Something may have changed since `sent` was made.
    stale: bool,
}

/// systemd's watchdog (`WatchdogSec=`): fed at half its interval, as long
/// as the main loop runs and every pair's datapath thread answers, so that
/// systemd restarts a daemon stuck in either.
pub(super) struct Watchdog {
    every: Duration,
    next: Instant,
}

impl StatusLine {
    /// When systemd listens (`NOTIFY_SOCKET`).
    pub(super) fn from_env() -> Option<StatusLine> {
        std::env::var_os("NOTIFY_SOCKET").map(|_| StatusLine {
            sent: String::new(),
            next: Instant::now(),
            stale: true,
        })
    }

    /// When a refresh held back is to be sent.
    pub(super) fn due(&self) -> Option<Instant> {
        self.stale.then_some(self.next)
    }
}

impl Watchdog {
    /// When systemd asks for one (`WATCHDOG_USEC`).
    pub(super) fn from_env() -> Option<Watchdog> {
        sd_notify::watchdog_enabled().map(|timeout| Watchdog {
            every: timeout / 2,
            next: Instant::now(),
        })
    }

    pub(super) fn due(&self) -> Instant {
        self.next
    }
}

/// RELOADING=1, with the MONOTONIC_USEC systemd 253 wants.
pub(super) fn tell_reloading() {
    match NotifyState::monotonic_usec_now() {
        Ok(now) => tell_systemd(&[NotifyState::Reloading, now]),
        Err(e) => tracing::warn!("cannot read CLOCK_MONOTONIC for systemd: {e}"),
    }
}

impl Daemon {
    /// Every wake may follow a change (a switch, a link opened, a
    /// reload): refresh `STATUS=`, at most every [`STATUS_LINE_EVERY`]; one
    /// held back is sent when that time comes (see `wait`).
    pub(super) fn update_status_line(&mut self) {
        let Some(line) = self.status_line.as_mut() else {
            return;
        };
        line.stale = true;
        let now = Instant::now();
        if now < line.next {
            return;
        }
        let text = crate::status::render_line(&self.status());
        let Some(line) = self.status_line.as_mut() else {
            return;
        };
        line.next = now + STATUS_LINE_EVERY;
        line.stale = false;
        if text != line.sent {
            tell_systemd(&[NotifyState::Status(&text)]);
            line.sent = text;
        }
    }

    pub(super) fn feed_watchdog(&mut self) {
        let Some(watchdog) = self.watchdog.as_mut() else {
            return;
        };
        let now = Instant::now();
        if now < watchdog.next {
            return;
        }
        watchdog.next = now + watchdog.every;
        let deadline = now + watchdog.every / 2;
        let stuck: Vec<&str> = self
            .pairs
            .iter()
            .filter(|(_, p)| {
                !p.datapath
                    .responsive(deadline.saturating_duration_since(Instant::now()))
            })
            .map(|(name, _)| name.as_str())
            .collect();
        if !stuck.is_empty() {
            tracing::error!(
                "datapath of pair {} not answering: the watchdog is not fed, systemd will restart \
                 the service",
                stuck.join(", ")
            );
        } else {
            tell_systemd(&[NotifyState::Watchdog]);
        }
    }
}
