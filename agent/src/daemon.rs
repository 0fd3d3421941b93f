//! `vfailover run`: the daemon.
//!
//! One main thread owns the control plane: discovery (rtnetlink + udev),
//! pairing, migration signals and announce schedules, the control socket
//! and signals. Each pair has its own datapath thread (netstack's
//! [`DatapathHandle`]) that it drives with commands; links are opened on
//! short-lived threads (binding an XSK can wait for the kernel) and handed
//! back to the main loop, which attaches them only if the device is still
//! the pair's.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result};
use nix::sys::eventfd::{EfdFlags, EventFd};
use sd_notify::NotifyState;
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use vfailover_netstack::datapath::{
    CallError, Command, DatapathHandle, DatapathOptions, CALL_TIMEOUT,
};
use vfailover_netstack::link::packet::PacketLink;
use vfailover_netstack::link::xdp::{XdpConfig, XdpLink, XdpModeRequest};
use vfailover_netstack::link::Link;
use vfailover_netstack::mac::MacAddr;
use vfailover_netstack::resend::ResendLimits;
use vfailover_netstack::stack::{Buffers, Stack, StackConfig};
use vfailover_netstack::stats::{Path as DataPath, PathCounters};

use crate::backoff::Backoff;
use crate::config::{Config, PairConfig, PrimaryMode, StandbyMode};
use crate::control::{ControlCall, ControlServer, Request, Response};
use crate::discovery::{Discovery, DiscoveryEvent, NetDev};
use crate::migration::{AnnounceSchedule, ClockWatch, MigrationWindow, Seen, Signal};
use crate::pairing::{Action, Hold, PairSpec, Pairing};
use crate::status::{LinkStatus, MigrationStatus, PairStatus, RefusedDevice, Status, SwitchStatus};

/// How long the main loop sleeps at most: it re-checks the wall clock
/// against the monotonic one this often (a paused VM shows as a jump).
const CLOCK_CHECK: Duration = Duration::from_secs(5);

/// A primary whose fast path could not be opened is tried again after
/// this, then twice as late each time up to [`FAST_PATH_RETRY_MAX`].
const FAST_PATH_RETRY: Duration = Duration::from_secs(1);
const FAST_PATH_RETRY_MAX: Duration = Duration::from_secs(30);

/// Run the daemon until SIGTERM/SIGINT, telling systemd (`Type=notify`)
/// when it is ready, reloading and stopping.
pub fn run(config_path: &Path) -> Result<()> {
    let config = Config::from_file(config_path)?;
    let mut daemon = Daemon::start(config_path.to_owned(), config)?;
    tell_systemd(&[NotifyState::Ready]);
    tracing::info!(config = %config_path.display(), "vfailover serving");
    daemon.serve()
}

/// Notifies systemd when it started us (`NOTIFY_SOCKET`; without it this
/// does nothing).
fn tell_systemd(states: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::warn!("cannot notify systemd: {e}");
    }
}

/// Which link of a pair a freshly opened link is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Primary,
    /// A primary still in its hold: attached to receive only.
    HeldPrimary,
    Standby,
}

/// A link opened on a helper thread, on its way to the main loop.
struct Opened {
    pair: String,
    role: Role,
    ifindex: u32,
    result: Result<Box<dyn Link>, String>,
}

/// The daemon's view of one pair.
struct PairRuntime {
    config: PairConfig,
    datapath: DatapathHandle,
    mac: Option<[u8; 6]>,
    standby: Option<NetDev>,
    /// The paired primary (being opened, or attached).
    primary: Option<NetDev>,
    /// A primary in its hold, opened (or being opened) to receive only.
    seen: Option<NetDev>,
    /// The ifindex of that link once the datapath has it.
    held: Option<u32>,
    /// Why the fast path is not in use, when opening the primary failed.
    fast_path_error: Option<String>,
    /// When to try opening the primary again after that.
    fast_path_retry: Backoff,
    migrations: u64,
    migration: MigrationWindow,
    schedule: Option<AnnounceSchedule>,
    announce_frames: u64,
    /// The datapath's last status call came back late: the next ones wait only
    /// [`LATE_DATAPATH_WAIT`], so a stuck datapath costs the main loop (the
    /// control socket, systemd's STATUS= refresh) little until it answers again.
    datapath_late: Cell<bool>,
}

/// How long a status waits on a datapath that was late the last time.
const LATE_DATAPATH_WAIT: Duration = Duration::from_millis(50);

struct Daemon {
    config_path: PathBuf,
    config: Config,
    started: Instant,
    discovery: Discovery,
    pairing: Pairing,
    pairs: BTreeMap<String, PairRuntime>,
    refused: BTreeMap<u32, RefusedDevice>,
    control: Option<ControlServer>,
    calls: Receiver<ControlCall>,
    opened_tx: Sender<Opened>,
    opened: Receiver<Opened>,
    waker: Arc<EventFd>,
    signals: UnixStream,
    terminate: Arc<std::sync::atomic::AtomicBool>,
    reload: Arc<std::sync::atomic::AtomicBool>,
    clock: ClockWatch,
    watchdog: Option<Watchdog>,
    /// `STATUS=` for systemd, when it listens (`NOTIFY_SOCKET`).
    status_line: Option<StatusLine>,
}

/// How often `STATUS=` is refreshed at most: each refresh asks every
/// datapath for its state.
const STATUS_LINE_EVERY: Duration = Duration::from_secs(1);

/// The last `STATUS=` sent, and when the next may go.
struct StatusLine {
    sent: String,
    next: Instant,
    /// Something may have changed since `sent` was made.
    stale: bool,
}

/// systemd's watchdog (`WatchdogSec=`): fed at half its interval, as long
/// as the main loop runs and every pair's datapath thread answers, so that
/// systemd restarts a daemon stuck in either.
struct Watchdog {
    every: Duration,
    next: Instant,
}

impl Daemon {
    fn start(config_path: PathBuf, config: Config) -> Result<Daemon> {
        let waker = Arc::new(
            EventFd::from_flags(EfdFlags::EFD_NONBLOCK | EfdFlags::EFD_CLOEXEC)
                .context("creating the main loop's eventfd")?,
        );
        let (signals, terminate, reload) = register_signals()?;
        let discovery = Discovery::open(config.sysfs_root.clone())
            .context("starting device discovery (rtnetlink, udev)")?;
        let pairing = Pairing::new(pair_specs(&config), hold(&config));
        let mut pairs = BTreeMap::new();
        for pair in &config.pairs {
            pairs.insert(pair.name.clone(), PairRuntime::start(pair)?);
        }
        let (calls_tx, calls) = mpsc::channel();
        let control_waker = waker.clone();
        let control = ControlServer::start(
            &config.control.socket,
            config.control.group.as_deref(),
            calls_tx,
            move || {
                let _ = control_waker.write(1);
            },
        )
        .with_context(|| {
            format!(
                "starting the control socket {}",
                config.control.socket.display()
            )
        })?;
        let (opened_tx, opened) = mpsc::channel();
        let mut daemon = Daemon {
            config_path,
            config,
            started: Instant::now(),
            discovery,
            pairing,
            pairs,
            refused: BTreeMap::new(),
            control: Some(control),
            calls,
            opened_tx,
            opened,
            waker,
            signals,
            terminate,
            reload,
            clock: ClockWatch::new(),
            watchdog: sd_notify::watchdog_enabled().map(|timeout| Watchdog {
                every: timeout / 2,
                next: Instant::now(),
            }),
            status_line: std::env::var_os("NOTIFY_SOCKET").map(|_| StatusLine {
                sent: String::new(),
                next: Instant::now(),
                stale: true,
            }),
        };
        daemon.update_pairing();
        Ok(daemon)
    }

    fn serve(&mut self) -> Result<()> {
        use std::sync::atomic::Ordering;
        loop {
            self.wait()?;
            if self.terminate.swap(false, Ordering::Relaxed) {
                tracing::info!("terminating");
                tell_systemd(&[NotifyState::Stopping]);
                return Ok(());
            }
            if self.reload.swap(false, Ordering::Relaxed) {
                if let Err(e) = self.reload_config() {
                    tracing::error!("reload refused, keeping the running config: {e:#}");
                }
            }
            let _ = self.waker.read();
            self.drain_signal_pipe();
            for event in self.discovery.process() {
                self.on_discovery(event);
            }
            self.update_pairing();
            while let Ok(opened) = self.opened.try_recv() {
                self.on_opened(opened);
            }
            while let Ok(call) = self.calls.try_recv() {
                let response = self.on_request(call.request);
                let _ = call.reply.send(response);
            }
            if let Some(jump) = self.clock.check() {
                self.signal_all(Signal::ClockJump(jump));
            }
            self.run_schedules();
            self.retry_fast_paths();
            self.feed_watchdog();
            self.update_status_line();
        }
    }

    /// Every wake may follow a change (a switch, a link opened, a
    /// reload): refresh `STATUS=`, at most every [`STATUS_LINE_EVERY`]; one
    /// held back is sent when that time comes (see `wait`).
    fn update_status_line(&mut self) {
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

    fn feed_watchdog(&mut self) {
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

    /// Open again the primaries whose fast path failed, when their retry
    /// is due.
    fn retry_fast_paths(&mut self) {
        let now = Instant::now();
        let due: Vec<(String, NetDev)> = self
            .pairs
            .iter_mut()
            .filter_map(|(name, p)| {
                let dev = p.primary.clone()?;
                p.fast_path_retry.take_due(now).then(|| (name.clone(), dev))
            })
            .collect();
        for (pair, dev) in due {
            self.open_link(&pair, Role::Primary, dev);
        }
    }

    /// Sleep until a file descriptor is ready or the next deadline.
    fn wait(&self) -> Result<()> {
        let now = Instant::now();
        let deadline = self
            .pairs
            .values()
            .filter_map(|p| p.schedule.as_ref().and_then(AnnounceSchedule::due))
            .chain(self.pairs.values().filter_map(|p| p.fast_path_retry.due()))
            .chain(self.watchdog.as_ref().map(|w| w.next))
            .chain(
                self.status_line
                    .as_ref()
                    .filter(|l| l.stale)
                    .map(|l| l.next),
            )
            .chain(self.pairing.next_deadline())
            .min();
        let timeout = deadline
            .map(|d| d.saturating_duration_since(now))
            .unwrap_or(CLOCK_CHECK)
            .min(CLOCK_CHECK);
        let mut fds: Vec<RawFd> = self.discovery.fds();
        fds.push(self.waker.as_fd().as_raw_fd());
        fds.push(self.signals.as_raw_fd());
        crate::sys::poll_readable(&fds, timeout).context("poll in the main loop")
    }

    fn drain_signal_pipe(&self) {
        use std::io::Read;
        let mut buf = [0u8; 64];
        while matches!((&self.signals).read(&mut buf), Ok(n) if n > 0) {}
    }

    fn on_discovery(&mut self, event: DiscoveryEvent) {
        if let DiscoveryEvent::NotifyPeers { ifindex } = event {
            let pair = self.pairs.iter().find(|(_, p)| {
                p.standby.as_ref().is_some_and(|s| {
                    s.ifindex == ifindex || s.master.as_deref() == self.ifname(ifindex).as_deref()
                })
            });
            if let Some((name, _)) = pair {
                let name = name.clone();
                self.signal(&name, Signal::NotifyPeers);
            }
        }
    }

    fn ifname(&self, ifindex: u32) -> Option<String> {
        self.discovery
            .devices()
            .get(&ifindex)
            .map(|d| d.ifname.clone())
    }

    fn update_pairing(&mut self) {
        let actions = self
            .pairing
            .update(self.discovery.devices(), Instant::now());
        for action in actions {
            self.on_action(action);
        }
    }

    fn on_action(&mut self, action: Action) {
        match action {
            Action::StandbyFound { pair, dev } => {
                tracing::info!(%pair, ifname = %dev.ifname, "standby found");
                let Some(p) = self.pairs.get_mut(&pair) else {
                    return;
                };
                let mac = dev.key_mac();
                p.mac = Some(mac);
                log_failed(
                    &pair,
                    "setting the MAC",
                    p.datapath.call(move |s| s.set_mac(mac)),
                );
                p.standby = Some(dev.clone());
                self.open_link(&pair, Role::Standby, dev);
            }
            Action::StandbyLost { pair, ifindex } => {
                tracing::warn!(%pair, ifindex, "standby lost: path none, sockets kept");
                if let Some(p) = self.pairs.get_mut(&pair) {
                    p.standby = None;
                    log_failed(
                        &pair,
                        "detaching the standby",
                        p.datapath.send(Command::DetachStandby),
                    );
                }
            }
            Action::AttachPrimary { pair, dev } => {
                tracing::info!(%pair, ifname = %dev.ifname, "primary found");
                let Some(p) = self.pairs.get_mut(&pair) else {
                    return;
                };
                p.primary = Some(dev.clone());
                p.seen = None;
                p.fast_path_retry.reset();
                self.refused.remove(&dev.ifindex);
                if p.held.take() == Some(dev.ifindex) {
                    // Already receiving on it since it came up: TX follows.
                    log_failed(
                        &pair,
                        "releasing the primary for TX",
                        p.datapath.send(Command::ReleasePrimary),
                    );
                } else {
                    self.open_link(&pair, Role::Primary, dev);
                }
            }
            Action::PrimarySeen { pair, dev } => {
                let Some(p) = self.pairs.get_mut(&pair) else {
                    return;
                };
                if p.primary.is_some() {
                    return;
                }
                tracing::info!(%pair, ifname = %dev.ifname, "primary candidate up: receiving on it during its hold");
                p.seen = Some(dev.clone());
                p.held = None;
                self.open_link(&pair, Role::HeldPrimary, dev);
            }
            Action::PrimaryReturned { pair, ifindex } => {
                tracing::info!(%pair, ifindex, "a primary is back after an unplug");
                self.signal(&pair, Signal::PrimaryReplugged);
            }
            Action::DetachPrimary {
                pair,
                ifindex,
                reason,
            } => {
                tracing::info!(%pair, ifindex, ?reason, "primary detached");
                if let Some(p) = self.pairs.get_mut(&pair) {
                    p.primary = None;
                    p.seen = None;
                    p.held = None;
                    // The error and its retries were about that device.
                    p.fast_path_error = None;
                    p.fast_path_retry.reset();
                    log_failed(
                        &pair,
                        "detaching the primary",
                        p.datapath.send(Command::DetachPrimary),
                    );
                }
            }
            Action::StandbyCarrierBack { pair, ifindex } => {
                tracing::info!(%pair, ifindex, "the standby has carrier again");
                self.signal(&pair, Signal::StandbyCarrier);
            }
            Action::Refused { dev, reason } => {
                tracing::warn!(ifname = %dev.ifname, %reason, "device refused");
                self.refused.insert(
                    dev.ifindex,
                    RefusedDevice {
                        ifname: dev.ifname.clone(),
                        ifindex: dev.ifindex,
                        mac: MacAddr(dev.mac).to_string(),
                        reason,
                    },
                );
            }
        }
    }

    /// Open a link for `pair` on a helper thread; the result comes back
    /// through `opened` and the waker.
    fn open_link(&self, pair: &str, role: Role, dev: NetDev) {
        let Some(p) = self.pairs.get(pair) else {
            return;
        };
        let addresses: Vec<IpAddr> = p
            .config
            .addresses
            .iter()
            .map(|c| c.address().into())
            .collect();
        let (primary_mode, standby_mode) = (p.config.primary_mode, p.config.standby_mode);
        let (tx, waker, pair) = (self.opened_tx.clone(), self.waker.clone(), pair.to_owned());
        let spawned = std::thread::Builder::new()
            .name(format!("open-{}", dev.ifname))
            .spawn(move || {
                let result = match role {
                    Role::Primary | Role::HeldPrimary => {
                        open_xdp(&dev.ifname, &addresses, xdp_mode(primary_mode))
                    }
                    Role::Standby => open_standby(&dev.ifname, &addresses, standby_mode),
                };
                let _ = tx.send(Opened {
                    pair,
                    role,
                    ifindex: dev.ifindex,
                    result,
                });
                let _ = waker.write(1);
            });
        if let Err(e) = spawned {
            tracing::error!("cannot start a thread to open a link: {e}");
        }
    }

    fn on_opened(&mut self, opened: Opened) {
        let Some(p) = self.pairs.get_mut(&opened.pair) else {
            return;
        };
        let current = match opened.role {
            Role::Primary => p.primary.as_ref(),
            Role::HeldPrimary => p.seen.as_ref(),
            Role::Standby => p.standby.as_ref(),
        };
        if current.map(|d| d.ifindex) != Some(opened.ifindex) {
            // The device left the pair while its link was being opened.
            return;
        }
        match (opened.role, opened.result) {
            (Role::Primary, Ok(link)) => {
                tracing::info!(pair = %opened.pair, ifname = link.ifname(), mode = %link.mode(), "fast path up");
                p.fast_path_error = None;
                p.fast_path_retry.reset();
                log_failed(
                    &opened.pair,
                    "attaching the primary",
                    p.datapath.send(Command::AttachPrimary(link)),
                );
            }
            (Role::HeldPrimary, Ok(link)) => {
                tracing::info!(pair = %opened.pair, ifname = link.ifname(), mode = %link.mode(), "receiving on the primary during its hold");
                p.held = Some(opened.ifindex);
                log_failed(
                    &opened.pair,
                    "attaching the held primary",
                    p.datapath.send(Command::AttachHeldPrimary(link)),
                );
            }
            (Role::HeldPrimary, Err(e)) => {
                // The attach after the hold opens it again and reports.
                tracing::debug!(pair = %opened.pair, "cannot receive on the primary during its hold yet: {e}");
            }
            (Role::Standby, Ok(link)) => {
                tracing::info!(pair = %opened.pair, ifname = link.ifname(), mode = %link.mode(), "standby up");
                log_failed(
                    &opened.pair,
                    "attaching the standby",
                    p.datapath.send(Command::AttachStandby(link)),
                );
            }
            (Role::Primary, Err(e)) => {
                let retry = p.fast_path_retry.failed(Instant::now());
                // Said once per distinct reason, not at every retry.
                if p.fast_path_error.as_ref() != Some(&e) {
                    tracing::error!(pair = %opened.pair, "cannot take the fast path, staying on the standby: {e}");
                }
                tracing::debug!(pair = %opened.pair, "fast path: next try in {retry:?}");
                p.fast_path_error = Some(e);
            }
            (Role::Standby, Err(e)) => {
                tracing::error!(pair = %opened.pair, "cannot open the standby: {e}");
            }
        }
    }

    fn signal_all(&mut self, signal: Signal) {
        let names: Vec<String> = self.pairs.keys().cloned().collect();
        for name in names {
            self.signal(&name, signal);
        }
    }

    /// A migration signal for `pair`: count it, and start announcing if the
    /// policy says so. The first round goes out at once.
    fn signal(&mut self, pair: &str, signal: Signal) {
        let timing = self.config.announce;
        let Some(p) = self.pairs.get_mut(pair) else {
            return;
        };
        if signal != Signal::Manual {
            match p.migration.note(signal, SystemTime::now()) {
                Seen::NewMigration => p.migrations += 1,
                Seen::NewStage => {
                    tracing::debug!(%pair, %signal, "a new stage of the migration already seen");
                }
                Seen::Repeat => {
                    tracing::debug!(%pair, %signal, "repeats a signal of this migration");
                    return;
                }
            }
        }
        let guest_announce = p.standby.as_ref().and_then(|s| s.guest_announce);
        if p.config.announce.announces(signal, guest_announce) {
            tracing::info!(%pair, %signal, ?guest_announce, "announcing");
            p.schedule = Some(AnnounceSchedule::start(timing, Instant::now()));
            // Peers and the gateway may have moved too: resolve them again.
            log_failed(
                pair,
                "refreshing neighbours",
                p.datapath.call(Stack::refresh_neighbors),
            );
        } else {
            tracing::info!(%pair, %signal, ?guest_announce, policy = p.config.announce.as_str(), "not announcing");
        }
        self.run_schedules();
        // After the first announce, so the network knows where to send the
        // peer's answers: what went out before it may have been lost.
        if let Some(p) = self.pairs.get(pair) {
            log_failed(
                pair,
                "resending unacknowledged TCP segments",
                p.datapath.call(|s| s.device_mut().resend_unacked()),
            );
        }
    }

    fn run_schedules(&mut self) {
        let now = Instant::now();
        for p in self.pairs.values_mut() {
            let Some(schedule) = p.schedule.as_mut() else {
                continue;
            };
            if schedule.fire(now) {
                let rarp = p.config.announce_rarp;
                p.announce_frames += p.datapath.call(move |s| s.announce(rarp)).unwrap_or(0) as u64;
            }
            if schedule.due().is_none() {
                p.schedule = None;
            }
        }
    }

    fn on_request(&mut self, request: Request) -> Response {
        match request {
            Request::Status => Response::Status(Box::new(self.status())),
            Request::Metrics => Response::Metrics(crate::status::render_prometheus(&self.status())),
            Request::Announce { pair } => {
                let names: Vec<String> = match pair {
                    Some(name) if self.pairs.contains_key(&name) => vec![name],
                    Some(name) => return Response::Error(format!("no pair named {name:?}")),
                    None => self.pairs.keys().cloned().collect(),
                };
                for name in &names {
                    self.signal(name, Signal::Manual);
                }
                Response::Announced(names)
            }
            Request::Reload => match self.reload_config() {
                Ok(()) => Response::Reloaded,
                Err(e) => Response::Error(format!("reload refused, running config kept: {e:#}")),
            },
        }
    }

    fn status(&self) -> Status {
        Status {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            pid: std::process::id(),
            uptime_secs: self.started.elapsed().as_secs_f64(),
            pairs: self.pairs.iter().map(|(name, p)| p.status(name)).collect(),
            refused: self.refused.values().cloned().collect(),
        }
    }

    /// Reload, with systemd told: RELOADING=1 (with the MONOTONIC_USEC
    /// systemd 253 wants), READY=1 once done, whatever the outcome.
    fn reload_config(&mut self) -> Result<()> {
        match NotifyState::monotonic_usec_now() {
            Ok(now) => tell_systemd(&[NotifyState::Reloading, now]),
            Err(e) => tracing::warn!("cannot read CLOCK_MONOTONIC for systemd: {e}"),
        }
        let result = self.apply_config();
        tell_systemd(&[NotifyState::Ready]);
        result
    }

    /// Re-read the config file; apply it only if it is valid.
    fn apply_config(&mut self) -> Result<()> {
        let config = Config::from_file(&self.config_path)?;
        if config.control != self.config.control || config.sysfs_root != self.config.sysfs_root {
            anyhow::bail!("[control] and sysfs_root cannot change on reload; restart the daemon");
        }
        let old: Vec<String> = self.pairs.keys().cloned().collect();
        for name in old {
            if !config.pairs.iter().any(|p| p.name == name) {
                tracing::info!(pair = %name, "pair removed by reload");
                self.pairs.remove(&name);
            }
        }
        for pair in &config.pairs {
            match self.pairs.get_mut(&pair.name) {
                Some(p) => p.reconfigure(pair)?,
                None => {
                    self.pairs
                        .insert(pair.name.clone(), PairRuntime::start(pair)?);
                }
            }
        }
        if pair_specs(&config) != pair_specs(&self.config) || hold(&config) != hold(&self.config) {
            // Which devices make which pair may change: start pairing afresh.
            // The links go first, in the datapath thread, so that the XDP
            // programs are gone before the devices are opened again.
            for (name, p) in self.pairs.iter_mut() {
                let detached = p.datapath.call(|s| {
                    s.device_mut().detach_primary();
                    s.device_mut().detach_standby();
                });
                log_failed(name, "detaching the links for a re-pairing", detached);
                p.standby = None;
                p.primary = None;
            }
            self.pairing = Pairing::new(pair_specs(&config), hold(&config));
        }
        self.config = config;
        tracing::info!("configuration reloaded");
        self.update_pairing();
        Ok(())
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // Datapaths stop first (their links detach the XDP programs), then
        // the control socket goes away.
        self.pairs.clear();
        if let Some(control) = self.control.take() {
            control.stop();
        }
    }
}

impl PairRuntime {
    fn start(config: &PairConfig) -> Result<PairRuntime> {
        let stack = Stack::new(&stack_config(config, [0; 6]), None, None)
            .with_context(|| format!("pair {}: building the stack", config.name))?;
        let datapath = DatapathHandle::spawn(stack, DatapathOptions::default(), None)
            .with_context(|| format!("pair {}: starting the datapath", config.name))?;
        Ok(PairRuntime {
            config: config.clone(),
            datapath,
            mac: None,
            standby: None,
            primary: None,
            seen: None,
            held: None,
            fast_path_error: None,
            fast_path_retry: Backoff::new(FAST_PATH_RETRY, FAST_PATH_RETRY_MAX),
            migrations: 0,
            migration: MigrationWindow::default(),
            schedule: None,
            announce_frames: 0,
            datapath_late: Cell::new(false),
        })
    }

    /// Apply a reloaded config: addresses, gateways and services change in
    /// place, so connections on addresses that stay survive.
    fn reconfigure(&mut self, config: &PairConfig) -> Result<()> {
        let new = stack_config(config, self.mac.unwrap_or([0; 6]));
        let old_services: Vec<_> = self.config.services.clone();
        let result = self.datapath.call(move |s| -> Result<(), String> {
            s.set_addresses(&new.addresses, new.gateway_v4, new.gateway_v6)
                .map_err(|e| e.to_string())?;
            for service in old_services.iter().filter(|o| !new.services.contains(o)) {
                s.remove_service(*service);
            }
            for service in new.services.iter().filter(|n| !old_services.contains(n)) {
                s.add_service(*service).map_err(|e| e.to_string())?;
            }
            Ok(())
        })?;
        result.map_err(|e| anyhow::anyhow!("pair {}: {e}", config.name))?;
        self.config = config.clone();
        Ok(())
    }

    fn status(&self, name: &str) -> PairStatus {
        let within = if self.datapath_late.get() {
            LATE_DATAPATH_WAIT
        } else {
            CALL_TIMEOUT
        };
        let snapshot = self.datapath.call_within(within, |s| {
            let d = s.device();
            let link = |l: Option<&dyn Link>| {
                l.map(|l| {
                    (
                        l.ifname().to_owned(),
                        l.ifindex(),
                        l.mode().to_string(),
                        format!("{:?}", l.health()).to_lowercase(),
                    )
                })
            };
            (
                d.path(),
                d.stats().clone(),
                link(d.primary()),
                link(d.standby()),
                s.addresses()
                    .iter()
                    .map(|a| a.to_string())
                    .collect::<Vec<_>>(),
            )
        });
        let mac = self.mac.map(|m| MacAddr(m).to_string()).unwrap_or_default();
        self.datapath_late
            .set(matches!(snapshot, Err(CallError::Late(_))));
        let (path, stats, primary, standby, addresses) = match snapshot {
            Ok(snapshot) => snapshot,
            Err(e) => {
                return PairStatus {
                    name: name.to_owned(),
                    mac,
                    standby: None,
                    primary: None,
                    path: "none".into(),
                    degraded: true,
                    switches: 0,
                    last_switch: None,
                    guest_announce: None,
                    announce_policy: self.config.announce.as_str().to_owned(),
                    migrations_detected: self.migrations,
                    last_migration: self.last_migration(),
                    announces_sent: self.announce_frames,
                    addresses: Vec::new(),
                    tx_no_path: 0,
                    resend: Default::default(),
                    fast_path_error: self.fast_path_error.clone(),
                    datapath_error: Some(e.to_string()),
                }
            }
        };
        let link_status = |l: Option<(String, u32, String, String)>, c: &PathCounters| {
            l.map(|(ifname, ifindex, mode, health)| LinkStatus {
                ifname,
                ifindex,
                mac: mac.clone(),
                mode,
                health,
                counters: *c,
            })
        };
        PairStatus {
            name: name.to_owned(),
            mac: mac.clone(),
            standby: link_status(standby, &stats.standby),
            primary: link_status(primary, &stats.primary),
            path: path.to_string(),
            degraded: path != DataPath::Primary || self.fast_path_error.is_some(),
            switches: stats.switches,
            last_switch: stats.last_switch.map(|s| SwitchStatus {
                at_unix: unix_secs(s.at),
                from: s.from.to_string(),
                to: s.to.to_string(),
                cause: s.cause.to_string(),
                first_tx_after_us: s.first_tx_after.map(|d| d.as_micros() as u64),
            }),
            guest_announce: self.standby.as_ref().and_then(|s| s.guest_announce),
            announce_policy: self.config.announce.as_str().to_owned(),
            migrations_detected: self.migrations,
            last_migration: self.last_migration(),
            announces_sent: self.announce_frames,
            addresses,
            tx_no_path: stats.tx_no_path,
            resend: stats.resend,
            fast_path_error: self.fast_path_error.clone(),
            datapath_error: None,
        }
    }

    fn last_migration(&self) -> Option<MigrationStatus> {
        self.migration.last().map(|(at, signal)| MigrationStatus {
            at_unix: unix_secs(at),
            signal: signal.to_string(),
        })
    }
}

/// The stack a configured pair runs on the pair's MAC (public so the
/// config fuzzer checks that every accepted config builds a stack).
pub fn stack_config(config: &PairConfig, mac: [u8; 6]) -> StackConfig {
    StackConfig {
        mac,
        addresses: config.addresses.clone(),
        gateway_v4: config.gateway,
        gateway_v6: config.gateway6,
        services: config.services.clone(),
        mtu: config.mtu,
        buffers: Buffers::default(),
        resend: ResendLimits::default(),
        tcp_sack: true,
    }
}

fn pair_specs(config: &Config) -> Vec<PairSpec> {
    config
        .pairs
        .iter()
        .map(|p| PairSpec {
            name: p.name.clone(),
            standby: p.standby.clone(),
            primary_mac: p.primary_mac.map(|m| m.0),
        })
        .collect()
}

fn hold(config: &Config) -> Hold {
    Hold {
        settle: config.failback.hold,
        flap_window: config.failback.flap_window,
        max_hold: config.failback.max_hold,
    }
}

fn xdp_mode(mode: PrimaryMode) -> XdpModeRequest {
    match mode {
        PrimaryMode::Auto => XdpModeRequest::Auto,
        PrimaryMode::ZeroCopy => XdpModeRequest::ZeroCopy,
        PrimaryMode::Driver => XdpModeRequest::Driver,
        PrimaryMode::Generic => XdpModeRequest::Generic,
    }
}

fn open_xdp(
    ifname: &str,
    addresses: &[IpAddr],
    mode: XdpModeRequest,
) -> Result<Box<dyn Link>, String> {
    let config = XdpConfig {
        ifname: ifname.to_owned(),
        addresses: addresses.to_vec(),
        mode,
        ..XdpConfig::default()
    };
    XdpLink::open(&config)
        .map(|l| Box::new(l) as Box<dyn Link>)
        .map_err(|e| format!("AF_XDP on {ifname}: {e}"))
}

/// The standby: AF_XDP when it takes an XDP program (and `auto` or `xdp`),
/// else AF_PACKET.
fn open_standby(
    ifname: &str,
    addresses: &[IpAddr],
    mode: StandbyMode,
) -> Result<Box<dyn Link>, String> {
    if mode != StandbyMode::Packet {
        match open_xdp(ifname, addresses, XdpModeRequest::Auto) {
            Ok(link) => return Ok(link),
            Err(e) if mode == StandbyMode::Xdp => return Err(e),
            Err(e) => tracing::info!("{e}; using AF_PACKET on the standby"),
        }
    }
    PacketLink::open(ifname, addresses)
        .map(|l| Box::new(l) as Box<dyn Link>)
        .map_err(|e| format!("AF_PACKET on {ifname}: {e}"))
}

/// SIGTERM/SIGINT set `terminate`, SIGHUP `reload`; each also writes to a
/// pipe the main loop polls, so it wakes at once.
fn register_signals() -> Result<(
    UnixStream,
    Arc<std::sync::atomic::AtomicBool>,
    Arc<std::sync::atomic::AtomicBool>,
)> {
    let (read, write) = UnixStream::pair().context("creating the signal pipe")?;
    read.set_nonblocking(true)?;
    write.set_nonblocking(true)?;
    let terminate = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reload = Arc::new(std::sync::atomic::AtomicBool::new(false));
    for signal in [SIGTERM, SIGINT] {
        signal_hook::flag::register(signal, terminate.clone())?;
    }
    signal_hook::flag::register(SIGHUP, reload.clone())?;
    for signal in [SIGTERM, SIGINT, SIGHUP] {
        signal_hook::low_level::pipe::register(signal, write.try_clone()?)?;
    }
    Ok((read, terminate, reload))
}

fn unix_secs(at: SystemTime) -> f64 {
    at.duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
}

/// A datapath command whose failure only needs a log line: a datapath that
/// is gone or late shows up in the pair's status on its own.
fn log_failed<T, E: std::fmt::Display>(
    pair: &(impl std::fmt::Display + ?Sized),
    what: &str,
    result: Result<T, E>,
) {
    if let Err(e) = result {
        tracing::warn!(%pair, "{what}: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair() -> PairRuntime {
        let text = "[[pair]]\naddresses = [\"10.0.0.2/24\"]\n";
        let config = Config::parse(text, "test").unwrap();
        PairRuntime::start(&config.pairs[0]).unwrap()
    }

    #[test]
    fn a_stuck_datapath_costs_status_one_full_wait_then_little() {
        let p = pair();
        assert_eq!(p.status("p").datapath_error, None);
        let (started_tx, started) = mpsc::channel();
        p.datapath
            .send(Command::Call(Box::new(move |_| {
                let _ = started_tx.send(());
                std::thread::sleep(CALL_TIMEOUT + Duration::from_secs(1));
            })))
            .unwrap();
        started.recv_timeout(Duration::from_secs(5)).unwrap();
        let t = Instant::now();
        let first = p.status("p");
        assert!(t.elapsed() >= CALL_TIMEOUT, "{:?}", t.elapsed());
        assert!(
            first.datapath_error.is_some() && first.degraded,
            "{first:?}"
        );
        // Still stuck: the next status does not wait the full bound again.
        let t = Instant::now();
        let second = p.status("p");
        assert!(t.elapsed() < CALL_TIMEOUT / 4, "{:?}", t.elapsed());
        assert!(second.datapath_error.is_some(), "{second:?}");
        // Once the datapath is back, so is the full status (a busy machine may need a
        // few of the short waits).
        assert!(p.datapath.responsive(Duration::from_secs(5)));
        let back = (0..40).find_map(|_| Some(p.status("p")).filter(|s| s.datapath_error.is_none()));
        assert_eq!(back.map(|s| s.path), Some("none".to_string()));
    }
}
