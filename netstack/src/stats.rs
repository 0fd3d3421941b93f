//! Counters of the failover datapath, in one serialisable struct.
//!
//! The datapath thread owns the live [`Stats`]; others get copies through a
//! snapshot command, so the hot path takes no locks.

use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use crate::resend::ResendCounters;

/// Which link the stack sends on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Path {
    Primary,
    Standby,
    None,
}

impl std::fmt::Display for Path {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Path::Primary => "primary",
            Path::Standby => "standby",
            Path::None => "none",
        })
    }
}

/// What made the path change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum SwitchCause {
    PrimaryAttached,
    PrimaryDetached,
    /// The primary's device went away or down (rtnetlink or an error on use).
    PrimaryLost,
    /// The primary's carrier came back.
    PrimaryRecovered,
    StandbyAttached,
    StandbyDetached,
    StandbyLost,
}

impl std::fmt::Display for SwitchCause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SwitchCause::PrimaryAttached => "primary-attached",
            SwitchCause::PrimaryDetached => "primary-detached",
            SwitchCause::PrimaryLost => "primary-lost",
            SwitchCause::PrimaryRecovered => "primary-recovered",
            SwitchCause::StandbyAttached => "standby-attached",
            SwitchCause::StandbyDetached => "standby-detached",
            SwitchCause::StandbyLost => "standby-lost",
        })
    }
}

/// Counters of one path, summed over every device that served it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PathCounters {
    pub rx_packets: u64,
    pub rx_bytes: u64,
    pub tx_packets: u64,
    pub tx_bytes: u64,
    /// Frames the link could not take (ring full, device down).
    pub tx_dropped: u64,
    /// Frames refused by [`crate::wire::check`] before smoltcp saw them.
    pub rx_malformed: u64,
    /// Frames that came in with the stack's own MAC as their source: its
    /// broadcasts flooded back by the switch through the other link. Dropped
    /// (a Linux bridge drops them too), or smoltcp would answer its own
    /// gratuitous ARP.
    pub rx_looped: u64,
}

impl PathCounters {
    pub(crate) fn rx(&mut self, len: usize) {
        self.rx_packets += 1;
        self.rx_bytes += len as u64;
    }

    pub(crate) fn tx(&mut self, len: usize) {
        self.tx_packets += 1;
        self.tx_bytes += len as u64;
    }
}

/// One change of path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Switch {
    pub from: Path,
    pub to: Path,
    pub cause: SwitchCause,
    /// Wall-clock time of the switch.
    pub at: SystemTime,
    /// Time from the switch to the first frame sent on the new path, once
    /// one has been sent: the part of the outage the stack is responsible for.
    pub first_tx_after: Option<Duration>,
}

/// Everything the datapath counts.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Stats {
    pub primary: PathCounters,
    pub standby: PathCounters,
    /// Frames smoltcp sent while no path was usable.
    pub tx_no_path: u64,
    pub switches: u64,
    pub last_switch: Option<Switch>,
    /// TCP segments and ACKs sent again after path changes and migrations.
    pub resend: ResendCounters,
}

impl Stats {
    pub(crate) fn path_mut(&mut self, path: Path) -> Option<&mut PathCounters> {
        match path {
            Path::Primary => Some(&mut self.primary),
            Path::Standby => Some(&mut self.standby),
            Path::None => None,
        }
    }
}
