//! One pair at run time: its datapath thread and what the main loop
//! knows about its devices, fast path and migrations.

use std::cell::Cell;
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result};
use vfailover_netstack::datapath::{CallError, DatapathHandle, DatapathOptions, CALL_TIMEOUT};
use vfailover_netstack::link::{Health, Link, LinkMode};
use vfailover_netstack::mac::MacAddr;
use vfailover_netstack::resend::ResendLimits;
use vfailover_netstack::stack::{Buffers, Stack, StackConfig};
use vfailover_netstack::stats::{Path as DataPath, PathCounters};

use crate::backoff::Backoff;
use crate::config::PairConfig;
use crate::discovery::NetDev;
use crate::migration::{AnnounceSchedule, MigrationWindow};
use crate::status::{wire_name, LinkStatus, MigrationStatus, PairStatus, SwitchStatus};

/// A primary whose fast path could not be opened is tried again after
/// this, then twice as late each time up to [`FAST_PATH_RETRY_MAX`].
const FAST_PATH_RETRY: Duration = Duration::from_secs(1);
const FAST_PATH_RETRY_MAX: Duration = Duration::from_secs(30);

/// The daemon's view of one pair.
pub(super) struct PairRuntime {
    pub(super) config: PairConfig,
    pub(super) datapath: DatapathHandle,
    pub(super) mac: Option<MacAddr>,
    pub(super) standby: Option<NetDev>,
    /// The paired primary (being opened, or attached).
    pub(super) primary: Option<NetDev>,
    /// A primary in its hold, opened (or being opened) to receive only.
    pub(super) seen: Option<NetDev>,
    /// The ifindex of that link once the datapath has it.
    pub(super) held: Option<u32>,
    /// Why the fast path is not in use, when opening the primary failed.
    pub(super) fast_path_error: Option<String>,
    /// When to try opening the primary again after that.
    pub(super) fast_path_retry: Backoff,
    pub(super) migrations: u64,
    pub(super) migration: MigrationWindow,
    pub(super) schedule: Option<AnnounceSchedule>,
    pub(super) announce_frames: u64,
    /// The datapath's last status call came back late: the next ones wait only
    /// [`LATE_DATAPATH_WAIT`], so a stuck datapath costs the main loop (the
    /// control socket, systemd's STATUS= refresh) little until it answers again.
    pub(super) datapath_late: Cell<bool>,
}

/// How long a status waits on a datapath that was late the last time.
const LATE_DATAPATH_WAIT: Duration = Duration::from_millis(50);

impl PairRuntime {
    pub(super) fn start(config: &PairConfig) -> Result<PairRuntime> {
        let stack = Stack::new(&stack_config(config, MacAddr::default()), None, None)
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

    /// Apply a reloaded config: addresses, gateways, services and the TCP
    /// settings change in place, so connections on addresses that stay
    /// survive (`tcp_sack` applies to new connections).
    pub(super) fn reconfigure(&mut self, config: &PairConfig) -> Result<()> {
        let new = stack_config(config, self.mac.unwrap_or_default());
        let old_services: Vec<_> = self.config.services.clone();
        // A new resender would forget what the current one holds.
        let resend = (config.tcp_resend != self.config.tcp_resend).then_some(new.resend);
        let result = self.datapath.call(move |s| -> Result<(), String> {
            s.set_addresses(&new.addresses, new.gateway_v4, new.gateway_v6)
                .map_err(|e| e.to_string())?;
            if let Some(limits) = resend {
                s.device_mut().set_resend_limits(limits);
            }
            s.device_mut().set_tcp_sack(new.tcp_sack);
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

    pub(super) fn status(&self, name: &str) -> PairStatus {
        let within = if self.datapath_late.get() {
            LATE_DATAPATH_WAIT
        } else {
            CALL_TIMEOUT
        };
        let snapshot = self.datapath.call_within(within, |s| {
            let d = s.device();
            let link = |l: Option<&dyn Link>| {
                l.map(|l| (l.ifname().to_owned(), l.ifindex(), l.mode(), l.health()))
            };
            (
                d.path(),
                d.stats(),
                link(d.primary()),
                link(d.standby()),
                s.addresses()
                    .iter()
                    .map(|a| a.to_string())
                    .collect::<Vec<_>>(),
            )
        });
        let mac = self.mac.map(|m| m.to_string()).unwrap_or_default();
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
                    path: wire_name(&DataPath::None),
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
        let link_status = |l: Option<(String, u32, LinkMode, Health)>, c: &PathCounters| {
            l.map(|(ifname, ifindex, mode, health)| LinkStatus {
                ifname,
                ifindex,
                mac: mac.clone(),
                mode: wire_name(&mode),
                health: wire_name(&health),
                counters: *c,
            })
        };
        PairStatus {
            name: name.to_owned(),
            mac: mac.clone(),
            standby: link_status(standby, &stats.standby),
            primary: link_status(primary, &stats.primary),
            path: wire_name(&path),
            degraded: path != DataPath::Primary || self.fast_path_error.is_some(),
            switches: stats.switches,
            last_switch: stats.last_switch.map(|s| SwitchStatus {
                at_unix: unix_secs(s.at),
                from: wire_name(&s.from),
                to: wire_name(&s.to),
                cause: wire_name(&s.cause),
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
pub fn stack_config(config: &PairConfig, mac: MacAddr) -> StackConfig {
    StackConfig {
        mac,
        addresses: config.addresses.clone(),
        gateway_v4: config.gateway,
        gateway_v6: config.gateway6,
        services: config.services.clone(),
        mtu: config.mtu,
        buffers: Buffers::default(),
        resend: resend_limits(config),
        tcp_sack: config.tcp_sack,
    }
}

fn resend_limits(config: &PairConfig) -> ResendLimits {
    ResendLimits {
        enabled: config.tcp_resend,
        ..ResendLimits::default()
    }
}

fn unix_secs(at: SystemTime) -> f64 {
    at.duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;
    use std::time::Instant;

    use vfailover_netstack::datapath::Command;

    use super::*;
    use crate::config::Config;

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
