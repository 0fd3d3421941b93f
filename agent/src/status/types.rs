//! The status types, as they go over the control socket.

use serde::{Deserialize, Serialize};
use vfailover_netstack::resend::ResendCounters;
use vfailover_netstack::stats::PathCounters;

/// The name a typed enum has in status: its serde name, the same in JSON,
/// the table and metrics (never a Debug name).
pub(crate) fn wire_name<T: Serialize>(value: &T) -> String {
    match serde_json::to_value(value) {
        Ok(serde_json::Value::String(name)) => name,
        other => unreachable!("a unit enum serializes to a string, not {other:?}"),
    }
}

/// The whole daemon.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Status {
    pub version: String,
    pub pid: u32,
    pub uptime_secs: f64,
    pub pairs: Vec<PairStatus>,
    /// Devices that looked like a primary or standby but were not used.
    pub refused: Vec<RefusedDevice>,
}

/// One failover pair.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PairStatus {
    pub name: String,
    pub mac: String,
    pub standby: Option<LinkStatus>,
    pub primary: Option<LinkStatus>,
    /// `primary`, `standby` or `none`: where TX goes now.
    pub path: String,
    /// Something is missing or unhealthy (no primary, standby down...).
    pub degraded: bool,
    pub switches: u64,
    pub last_switch: Option<SwitchStatus>,
    /// Whether the standby negotiated `VIRTIO_NET_F_GUEST_ANNOUNCE`;
    /// `None` when unknown (no standby, or no feature bits in sysfs).
    pub guest_announce: Option<bool>,
    /// `auto`, `always` or `never`.
    pub announce_policy: String,
    pub migrations_detected: u64,
    pub last_migration: Option<MigrationStatus>,
    /// Announce frames sent (GARP, unsolicited NA, RARP), not rounds.
    pub announces_sent: u64,
    /// The stack's addresses, `address/prefix`.
    pub addresses: Vec<String>,
    /// Frames the stack wanted to send while no link could take them.
    pub tx_no_path: u64,
    /// TCP segments and ACKs sent again after switches and migrations.
    #[serde(default)]
    pub resend: ResendCounters,
    /// Why the paired primary is not carrying the stack (AF_XDP could not
    /// be opened on it: another XDP program attached, no driver support...);
    /// `None` while the fast path works or no primary is paired.
    #[serde(default)]
    pub fast_path_error: Option<String>,
    /// Why the rest of this pair's status is missing: its datapath thread
    /// did not answer (stuck or stopped); `None` while it answers.
    #[serde(default)]
    pub datapath_error: Option<String>,
}

/// One link of a pair.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LinkStatus {
    pub ifname: String,
    pub ifindex: u32,
    pub mac: String,
    /// How it is opened: `xdp-zero-copy`, `xdp-driver`, `xdp-generic` or
    /// `packet`.
    pub mode: String,
    /// `up`, `down` (down or no carrier) or `gone`.
    pub health: String,
    /// On the wire as fields of the link (`rx_packets`, ...).
    #[serde(flatten)]
    pub counters: PathCounters,
}

/// The last switch of a pair's path.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SwitchStatus {
    /// Seconds since the Unix epoch.
    pub at_unix: f64,
    /// Paths, as in [`PairStatus::path`].
    pub from: String,
    pub to: String,
    /// `primary-attached`, `primary-detached`, `primary-lost`,
    /// `primary-recovered`, `standby-attached`, `standby-detached` or
    /// `standby-lost`.
    pub cause: String,
    /// From the event to the first frame sent on the new path.
    pub first_tx_after_us: Option<u64>,
}

/// The last migration detected on a pair.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MigrationStatus {
    /// Seconds since the Unix epoch.
    pub at_unix: f64,
    /// What gave it away: `primary-replugged`, `notify-peers`,
    /// `standby-carrier` or `clock-jump(2.5s)` (a manual announce is not a
    /// migration).
    pub signal: String,
}

/// A device the daemon saw and did not use, and why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RefusedDevice {
    pub ifname: String,
    pub ifindex: u32,
    pub mac: String,
    pub reason: String,
}

#[cfg(test)]
mod tests {
    use vfailover_netstack::link::{Health, LinkMode};
    use vfailover_netstack::stats::{Path, SwitchCause};

    use super::*;
    use crate::status::fixtures::sample;

    #[test]
    fn enum_names_are_what_the_daemon_always_emitted() {
        // Display (mode, path, cause) and lowercased Debug (health), before.
        for mode in [
            LinkMode::XdpZeroCopy,
            LinkMode::XdpDriver,
            LinkMode::XdpGeneric,
            LinkMode::Packet,
        ] {
            assert_eq!(wire_name(&mode), mode.to_string());
        }
        assert_eq!(wire_name(&LinkMode::XdpDriver), "xdp-driver");
        for health in [Health::Up, Health::Down, Health::Gone] {
            assert_eq!(wire_name(&health), format!("{health:?}").to_lowercase());
        }
        for path in [Path::Primary, Path::Standby, Path::None] {
            assert_eq!(wire_name(&path), path.to_string());
        }
        for cause in [
            SwitchCause::PrimaryAttached,
            SwitchCause::PrimaryDetached,
            SwitchCause::PrimaryLost,
            SwitchCause::PrimaryRecovered,
            SwitchCause::StandbyAttached,
            SwitchCause::StandbyDetached,
            SwitchCause::StandbyLost,
        ] {
            assert_eq!(wire_name(&cause), cause.to_string());
        }
    }

    #[test]
    fn json_round_trip() {
        let status = sample();
        let json = serde_json::to_string(&status).unwrap();
        assert_eq!(serde_json::from_str::<Status>(&json).unwrap(), status);
        // Counters are fields of the link itself on the wire.
        assert!(
            json.contains(r#""health":"up","rx_packets":1234567,"#),
            "{json}"
        );
    }
}
