//! The validated configuration the daemon runs on.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use smoltcp::wire::IpCidr;
use vfailover_netstack::mac::MacAddr;
use vfailover_netstack::stack::ServiceConfig;

use crate::migration::AnnouncePolicy;
use crate::pairing::Failback;

/// The whole configuration, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Where sysfs is mounted; tests point this at a fake tree.
    pub sysfs_root: PathBuf,
    pub control: ControlConfig,
    pub announce: AnnounceTiming,
    pub failback: Failback,
    pub pairs: Vec<PairConfig>,
}

/// The control socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControlConfig {
    pub socket: PathBuf,
    /// Group of the socket (mode 0660). `None` (`group = ""` in the file)
    /// leaves it in root's group.
    pub group: Option<String>,
}

/// QEMU's announce knobs (`-object announce-*` / `announce_self`): the
/// first round goes out at once, the next after `initial`, each later gap
/// grows by `step` up to `max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AnnounceTiming {
    pub initial: Duration,
    pub max: Duration,
    pub rounds: u32,
    pub step: Duration,
}

impl Default for AnnounceTiming {
    /// QEMU's defaults (net/announce.c).
    fn default() -> Self {
        AnnounceTiming {
            initial: Duration::from_millis(50),
            max: Duration::from_millis(550),
            rounds: 5,
            step: Duration::from_millis(100),
        }
    }
}

/// How the primary (VF) is opened with AF_XDP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PrimaryMode {
    /// The best the device supports: zero-copy, then driver, then generic.
    #[default]
    Auto,
    ZeroCopy,
    Driver,
    Generic,
}

/// How the standby (virtio-net) is opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum StandbyMode {
    /// AF_XDP when the device takes an XDP program, else AF_PACKET.
    #[default]
    Auto,
    Xdp,
    Packet,
}

/// One failover pair and the stack that runs on it.
#[derive(Debug, Clone, PartialEq)]
pub struct PairConfig {
    pub name: String,
    /// The standby's interface name; `None`: the next auto-detected one.
    pub standby: Option<String>,
    /// `None`: the standby's permanent MAC.
    pub primary_mac: Option<MacAddr>,
    pub addresses: Vec<IpCidr>,
    pub gateway: Option<Ipv4Addr>,
    pub gateway6: Option<Ipv6Addr>,
    pub announce: AnnouncePolicy,
    /// Also send a RARP for the MAC (what QEMU itself sends).
    pub announce_rarp: bool,
    /// Keep unacknowledged TCP segments and send them again after a switch
    /// or a migration signal.
    pub tcp_resend: bool,
    /// Let TCP peers use SACK.
    pub tcp_sack: bool,
    pub primary_mode: PrimaryMode,
    pub standby_mode: StandbyMode,
    /// IP MTU of the links.
    pub mtu: usize,
    pub services: Vec<ServiceConfig>,
}
