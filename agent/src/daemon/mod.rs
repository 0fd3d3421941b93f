//! `vfailover run`: the daemon.
//!
//! One main thread owns the control plane: discovery (rtnetlink + udev),
//! pairing, migration signals and announce schedules, the control socket
//! and signals. Each pair has its own datapath thread (netstack's
//! [`DatapathHandle`](vfailover_netstack::datapath::DatapathHandle)) that
//! it drives with commands; links are opened on short-lived threads
//! (binding an XSK can wait for the kernel) and handed back to the main
//! loop, which attaches them only if the device is still the pair's.

mod links;
mod pair;
mod reload;
mod systemd;

use std::collections::BTreeMap;
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
use vfailover_netstack::datapath::Command;
use vfailover_netstack::stack::Stack;

use crate::config::Config;
use crate::control::{ControlCall, ControlServer, Request, Response};
use crate::discovery::{Discovery, DiscoveryEvent};
use crate::migration::{AnnounceSchedule, ClockWatch, Seen, Signal};
use crate::pairing::{Action, Pairing};
use crate::status::{RefusedDevice, Status};
use links::{Opened, Role};
pub use pair::stack_config;
use pair::PairRuntime;
use reload::{pair_specs, plan_reload, repairing_needed, running_config};
use systemd::{tell_reloading, tell_systemd, StatusLine, Watchdog};

/// How long the main loop sleeps at most: it re-checks the wall clock
/// against the monotonic one this often (a paused VM shows as a jump).
const CLOCK_CHECK: Duration = Duration::from_secs(5);

/// Run the daemon until SIGTERM/SIGINT, telling systemd (`Type=notify`)
/// when it is ready, reloading and stopping.
pub fn run(config_path: &Path) -> Result<()> {
    let config = Config::from_file(config_path)?;
    let mut daemon = Daemon::start(config_path.to_owned(), config)?;
    tell_systemd(&[NotifyState::Ready]);
    tracing::info!(config = %config_path.display(), "vfailover serving");
    daemon.serve()
}

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

impl Daemon {
    fn start(config_path: PathBuf, config: Config) -> Result<Daemon> {
        let waker = Arc::new(
            EventFd::from_flags(EfdFlags::EFD_NONBLOCK | EfdFlags::EFD_CLOEXEC)
                .context("creating the main loop's eventfd")?,
        );
        let (signals, terminate, reload) = register_signals()?;
        let discovery = Discovery::open(config.sysfs_root.clone())
            .context("starting device discovery (rtnetlink, udev)")?;
        let pairing = Pairing::new(pair_specs(&config), config.failback);
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
            watchdog: Watchdog::from_env(),
            status_line: StatusLine::from_env(),
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
                    tracing::error!("{e}");
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

    /// Sleep until a file descriptor is ready or the next deadline.
    fn wait(&self) -> Result<()> {
        let now = Instant::now();
        let deadline = self
            .pairs
            .values()
            .filter_map(|p| p.schedule.as_ref().and_then(AnnounceSchedule::due))
            .chain(self.pairs.values().filter_map(|p| p.fast_path_retry.due()))
            .chain(self.watchdog.as_ref().map(Watchdog::due))
            .chain(self.status_line.as_ref().and_then(StatusLine::due))
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
                p.fast_path_retry.reset();
                self.refused.remove(&dev.ifindex);
                let opening = p.seen.as_ref().map(|d| d.ifindex) == Some(dev.ifindex);
                if p.held.take() == Some(dev.ifindex) {
                    // Already receiving on it since it came up: TX follows.
                    p.seen = None;
                    log_failed(
                        &pair,
                        "releasing the primary for TX",
                        p.datapath.send(Command::ReleasePrimary),
                    );
                } else if !opening {
                    p.seen = None;
                    self.open_link(&pair, Role::Primary, dev);
                }
                // Else its link is still being opened to receive (a short
                // hold): it carries TX as soon as it is there. A second
                // socket on the same queue would only wait for the first.
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
                        mac: dev.mac.to_string(),
                        reason,
                    },
                );
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
                Err(e) => Response::Error(e.to_string()),
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
    fn reload_config(&mut self) -> Result<(), ReloadError> {
        tell_reloading();
        let result = self.apply_config();
        tell_systemd(&[NotifyState::Ready]);
        result
    }

    /// Re-read the config file and apply it. An invalid config, or one
    /// that changes what only a restart changes, is refused whole
    /// ([`ReloadError::Refused`]). Otherwise each pair is applied on its
    /// own: one that fails to start stays out, one that fails to update
    /// keeps its settings, the others take theirs, and the stored config
    /// is what runs, so status and the next reload start from the truth.
    fn apply_config(&mut self) -> Result<(), ReloadError> {
        let config =
            Config::from_file(&self.config_path).map_err(|e| ReloadError::Refused(e.into()))?;
        let plan =
            plan_reload(&self.config, &config).map_err(|e| ReloadError::Refused(e.into()))?;
        for name in &plan.removed {
            tracing::info!(pair = %name, "pair removed by reload");
            self.pairs.remove(name);
        }
        let (mut failed, mut errors) = (Vec::new(), Vec::new());
        for pair in &config.pairs {
            let outcome = if plan.added.contains(&pair.name) {
                PairRuntime::start(pair).map(|p| {
                    self.pairs.insert(pair.name.clone(), p);
                })
            } else if let Some(p) = self.pairs.get_mut(&pair.name) {
                p.reconfigure(pair)
            } else {
                Ok(())
            };
            if let Err(e) = outcome {
                tracing::error!(pair = %pair.name, "reload: {e:#}");
                errors.push(format!("pair {:?}: {e:#}", pair.name));
                failed.push(pair.name.clone());
            }
        }
        let config = running_config(config, &self.config, &failed);
        let restart_pairing = repairing_needed(&self.config, &config);
        if restart_pairing {
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
            self.pairing = Pairing::new(pair_specs(&config), config.failback);
        }
        self.config = config;
        self.update_pairing();
        if errors.is_empty() {
            tracing::info!("configuration reloaded");
            Ok(())
        } else {
            Err(ReloadError::Partial(errors))
        }
    }
}

/// Why a reload did not apply in full.
#[derive(Debug, thiserror::Error)]
enum ReloadError {
    #[error("reload refused, running config kept: {0:#}")]
    Refused(anyhow::Error),
    #[error(
        "reload applied except for these, which run what they ran before (or, if new, do not \
         run): {}", .0.join("; ")
    )]
    Partial(Vec<String>),
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
