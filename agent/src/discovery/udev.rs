//! Hotplug events for netdevs from udev, or from the kernel when no udev
//! daemon runs.
//!
//! udev's events come after its rules ran (drivers bound, names given), so
//! they are the moment to classify a new device again. systemd-udevd only
//! rebroadcasts into its own network namespace: in another namespace, or
//! with no udevd at all, the kernel's uevents are the only source (they do
//! reach a socket inside a namespace, for that namespace's devices).

use std::fs;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use udev::{MonitorBuilder, MonitorSocket};

/// Present while systemd-udevd runs.
const UDEVD_CONTROL: &str = "/run/udev/control";

/// Where events come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// systemd-udevd, after its rules.
    Udev,
    /// The kernel's raw uevents.
    Kernel,
}

/// One uevent of the `net` subsystem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UdevEvent {
    /// `add`, `remove`, `move` (a rename), `change`, ...
    pub action: String,
    pub ifindex: Option<u32>,
    pub ifname: Option<String>,
}

/// A non-blocking monitor on the `net` subsystem.
pub struct UdevMonitor {
    socket: MonitorSocket,
    source: Source,
}

impl UdevMonitor {
    /// Open in the calling thread's network namespace.
    pub fn open() -> io::Result<UdevMonitor> {
        let source = if Path::new(UDEVD_CONTROL).exists() && in_init_netns() {
            Source::Udev
        } else {
            Source::Kernel
        };
        let builder = match source {
            Source::Udev => MonitorBuilder::new()?,
            Source::Kernel => MonitorBuilder::new_kernel()?,
        };
        let socket = builder.match_subsystem("net")?.listen()?;
        Ok(UdevMonitor { socket, source })
    }

    pub fn source(&self) -> Source {
        self.source
    }

    pub fn fd(&self) -> RawFd {
        self.socket.as_raw_fd()
    }

    /// Every pending event (the socket is non-blocking).
    pub fn read(&mut self) -> Vec<UdevEvent> {
        self.socket
            .iter()
            .map(|event| UdevEvent {
                action: prop(&event, "ACTION").unwrap_or_default(),
                ifindex: prop(&event, "IFINDEX").and_then(|s| s.parse().ok()),
                ifname: prop(&event, "INTERFACE"),
            })
            .collect()
    }
}

fn prop(device: &udev::Device, key: &str) -> Option<String> {
    Some(device.property_value(key)?.to_str()?.to_owned())
}

/// The calling thread shares PID 1's network namespace, where udevd runs.
/// Unknown counts as yes: that is the normal case of a guest agent.
fn in_init_netns() -> bool {
    let ns = |path| fs::metadata(path).map(|m| (m.dev(), m.ino()));
    match (ns("/proc/thread-self/ns/net"), ns("/proc/1/ns/net")) {
        (Ok(ours), Ok(init)) => ours == init,
        _ => true,
    }
}
