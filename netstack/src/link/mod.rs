//! Links: the NICs the stack sends and receives Ethernet frames on.
//!
//! A [`Link`] is one device seen from the datapath: it hands up received
//! frames, takes frames to send, and tells whether the device is still usable.
//! Three kinds exist: [`xdp`] (AF_XDP through xsk-rs, the fast path), [`packet`]
//! (AF_PACKET with a socket filter, for a standby that refuses XDP) and
//! [`memory`] (an in-process pair for tests that need no root).

pub mod memory;
pub mod packet;
pub mod xdp;

use std::fmt;
use std::io;
use std::net::IpAddr;
use std::os::fd::RawFd;

use serde::Serialize;

/// How a link moves frames; reported in status so users know what they got.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum LinkMode {
    /// AF_XDP bound in zero-copy mode, program in driver mode.
    XdpZeroCopy,
    /// AF_XDP in copy mode, program in driver (native) mode.
    XdpDriver,
    /// AF_XDP in copy mode, program in generic (SKB) mode.
    XdpGeneric,
    /// AF_PACKET raw socket with a classic BPF filter.
    Packet,
    /// In-memory test link.
    Memory,
}

impl fmt::Display for LinkMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LinkMode::XdpZeroCopy => "xdp-zero-copy",
            LinkMode::XdpDriver => "xdp-driver",
            LinkMode::XdpGeneric => "xdp-generic",
            LinkMode::Packet => "packet",
            LinkMode::Memory => "memory",
        })
    }
}

/// Whether the device under a link can still carry frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Health {
    Up,
    /// The device exists but is down or has no carrier (ENETDOWN).
    Down,
    /// The device is gone (ENXIO, or RTM_DELLINK told the owner).
    Gone,
}

/// Errors a link reports. `Down` and `Gone` are the device going away and
/// are expected during failover; the others are bugs or resource limits.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("device {0} is down")]
    Down(String),
    #[error("device {0} is gone")]
    Gone(String),
    #[error("frame of {len} bytes does not fit the link's {max} bytes")]
    TooLong { len: usize, max: usize },
    #[error("{what} on {ifname}: {source}")]
    Io {
        ifname: String,
        what: &'static str,
        #[source]
        source: io::Error,
    },
    /// Another XDP program is attached; vfailover never replaces one.
    #[error(
        "{ifname} already has XDP program id {id} attached ({mode} mode); vfailover does \
         not replace another program: stop its owner or detach it first"
    )]
    ForeignProgram {
        ifname: String,
        id: u32,
        mode: &'static str,
    },
    /// Attaching was refused as busy, and no program could be named.
    #[error(
        "cannot attach XDP program to {ifname}: {error} (another program, or one on an \
         upper device such as a failover master?)"
    )]
    AttachRefused { ifname: String, error: io::Error },
    /// A queue's AF_XDP socket stayed busy for the whole bind timeout.
    #[error(
        "{what}: {error} (still busy after {waited:?}: an earlier AF_XDP socket holds the queue)"
    )]
    QueueBusy {
        what: String,
        error: io::Error,
        waited: std::time::Duration,
    },
    /// Every XDP mode tried failed; one reason per mode.
    #[error("no usable XDP mode on {ifname}: {}", failures.join("; "))]
    NoXdpMode {
        ifname: String,
        failures: Vec<String>,
    },
    /// libbpf could not open, load or update the XDP filter.
    #[error("{what}: {error}")]
    Filter { what: String, error: String },
    /// The built-in XDP filter object lacks a map (a build problem).
    #[error("XDP filter object has no map {0}")]
    MissingMap(String),
    /// More addresses of one family than the XDP filter's map holds.
    #[error("{count} IPv{family} addresses requested, the XDP filter holds {max}")]
    TooManyAddresses { count: usize, family: u8, max: u32 },
    /// More addresses than a socket filter can check.
    #[error(
        "{addresses} addresses need a socket filter of {insns} instructions; the kernel \
         takes at most {max}"
    )]
    FilterTooLong {
        addresses: usize,
        insns: usize,
        max: usize,
    },
    #[error("{0}")]
    InvalidIfName(io::Error),
}

impl LinkError {
    /// Classify an errno from a send/receive on `ifname`: ENXIO and ENODEV
    /// mean the netdev unregistered, ENETDOWN that it is down.
    pub fn from_io(ifname: &str, what: &'static str, source: io::Error) -> Self {
        match source.raw_os_error() {
            Some(libc::ENXIO) | Some(libc::ENODEV) => LinkError::Gone(ifname.to_owned()),
            Some(libc::ENETDOWN) => LinkError::Down(ifname.to_owned()),
            _ => LinkError::Io {
                ifname: ifname.to_owned(),
                what,
                source,
            },
        }
    }

    /// The health this error implies, if it says anything about the device.
    pub fn health(&self) -> Option<Health> {
        match self {
            LinkError::Down(_) => Some(Health::Down),
            LinkError::Gone(_) => Some(Health::Gone),
            _ => None,
        }
    }
}

/// One NIC under the stack.
///
/// The datapath thread owns its links; a link is built elsewhere (opening an
/// XSK can wait on `bind`) and moved in, hence `Send`.
pub trait Link: Send {
    /// Interface name when the link was opened (for logs; names can change).
    fn ifname(&self) -> &str;
    /// Interface index: the stable key of the device.
    fn ifindex(&self) -> u32;
    fn mode(&self) -> LinkMode;
    /// Largest frame (Ethernet header included) the link can carry.
    fn max_frame_len(&self) -> usize;

    /// Hand up to `budget` received frames to `deliver`, returning how many.
    fn recv(&mut self, budget: usize, deliver: &mut dyn FnMut(&[u8])) -> Result<usize, LinkError>;

    /// Queue one frame of `len` bytes, written in place by `fill`.
    /// Returns `Ok(false)` when the TX ring is full (the caller counts a drop).
    fn send(&mut self, len: usize, fill: &mut dyn FnMut(&mut [u8])) -> Result<bool, LinkError>;

    /// Push queued frames to the device and reclaim finished ones.
    fn flush(&mut self) -> Result<(), LinkError>;

    /// File descriptors that become readable when frames arrive.
    fn fds(&self) -> Vec<RawFd>;

    /// Replace the set of addresses whose frames the link takes from the device
    /// (the XDP map or the socket filter); everything else stays with the kernel.
    fn set_addresses(&mut self, addrs: &[IpAddr]) -> Result<(), LinkError>;

    /// Current health, as last learned from use or from the owner.
    fn health(&self) -> Health;
    /// Record what the owner learned from rtnetlink (RTM_DELLINK, carrier).
    fn set_health(&mut self, health: Health);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The texts the `Setup(String)` these variants replaced carried.
    #[test]
    fn setup_errors_read_as_before() {
        let busy = || io::Error::from_raw_os_error(libc::EBUSY);
        let cases = [
            (
                LinkError::ForeignProgram {
                    ifname: "eth2".into(),
                    id: 7,
                    mode: "driver",
                },
                "eth2 already has XDP program id 7 attached (driver mode); vfailover does not \
                 replace another program: stop its owner or detach it first",
            ),
            (
                LinkError::AttachRefused {
                    ifname: "eth2".into(),
                    error: busy(),
                },
                "cannot attach XDP program to eth2: Device or resource busy (os error 16) \
                 (another program, or one on an upper device such as a failover master?)",
            ),
            (
                LinkError::QueueBusy {
                    what: "bind queue 0".into(),
                    error: busy(),
                    waited: std::time::Duration::from_secs(2),
                },
                "bind queue 0: Device or resource busy (os error 16) (still busy after 2s: an \
                 earlier AF_XDP socket holds the queue)",
            ),
            (
                LinkError::NoXdpMode {
                    ifname: "eth2".into(),
                    failures: vec!["a".into(), "b".into()],
                },
                "no usable XDP mode on eth2: a; b",
            ),
            (
                LinkError::TooManyAddresses {
                    count: 65,
                    family: 6,
                    max: 64,
                },
                "65 IPv6 addresses requested, the XDP filter holds 64",
            ),
            (
                LinkError::FilterTooLong {
                    addresses: 2000,
                    insns: 5000,
                    max: 4096,
                },
                "2000 addresses need a socket filter of 5000 instructions; the kernel takes at \
                 most 4096",
            ),
        ];
        for (error, text) in cases {
            assert_eq!(error.to_string(), text);
        }
    }
}
