//! The status types, as they go over the control socket.

use serde::{Deserialize, Serialize};
use vfailover_netstack::resend::ResendCounters;
use vfailover_netstack::stats::PathCounters;

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
    /// How it is opened: `zero-copy`, `driver`, `generic`, `packet`...
    pub mode: String,
    /// `up`, `no-carrier`, `down`, `gone`...
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
    pub from: String,
    pub to: String,
    pub cause: String,
    /// From the event to the first frame sent on the new path.
    pub first_tx_after_us: Option<u64>,
}

/// The last migration detected on a pair.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MigrationStatus {
    /// Seconds since the Unix epoch.
    pub at_unix: f64,
    /// What gave it away: `notify-peers`, `replug`, `clock-jump`, `manual`...
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
    use super::*;
    use crate::status::fixtures::sample;

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
