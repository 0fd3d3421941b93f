//! Discovery: which netdevs exist, what they are, and what happens to them.
//!
//! rtnetlink is the authority on a device's existence, name, addresses and
//! state: a dump at start, then notifications (`RTM_NEWLINK`, `RTM_DELLINK`,
//! `IFLA_EVENT_NOTIFY_PEERS`). Sysfs only adds the classification (driver,
//! bus, virtio features, upper/lower links), read again on every event for the
//! device, and udev's hotplug events say when it is worth reading again (its
//! rules may rename or bind a device after the kernel announced it).
//!
//! Devices are keyed on ifindex, never on name: udev renames a VF while it is
//! up. A classification that cannot be read (a device mid-probe, a directory
//! renamed under us, `/sys` of another namespace) keeps what an earlier read
//! found; the pairing's hold time covers the settling.

mod sysfs;
mod udev;

use std::collections::BTreeMap;
use std::os::fd::RawFd;
use std::path::PathBuf;

use anyhow::{Context, Result};
use vfailover_netstack::mac::MacAddr;
use vfailover_netstack::monitor::{dump_links, LinkEvent, LinkMonitor, LinkState};

pub use self::sysfs::{Facts, Sysfs, GUEST_ANNOUNCE_BIT, STANDBY_BIT, VIRTIO_NET};
pub use self::udev::{Source, UdevEvent, UdevMonitor};

#[cfg(test)]
pub use self::sysfs::fake;

/// What a netdev is to failover.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Class {
    /// virtio-net with `VIRTIO_NET_F_STANDBY`, not a master.
    Standby,
    /// net_failover's master: has `lower_*` links and the standby's parent.
    FailoverMaster,
    /// On a PCI device, not virtio, not a master: a primary if its MAC
    /// matches a standby's (pairing decides that).
    PrimaryCandidate,
    Other,
}

/// A network device: rtnetlink's view plus sysfs's classification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetDev {
    pub ifindex: u32,
    pub ifname: String,
    pub mac: MacAddr,
    /// The permanent MAC, which the kernel's failover pairs on.
    pub perm_mac: Option<MacAddr>,
    pub up: bool,
    pub carrier: bool,
    /// How often `carrier` went from true to false: a flap shorter than
    /// one batch of events still counts.
    pub carrier_losses: u32,
    pub class: Class,
    pub driver: Option<String>,
    pub on_pci: bool,
    /// `VIRTIO_NET_F_STANDBY` (false when unknown).
    pub standby_bit: bool,
    /// `VIRTIO_NET_F_GUEST_ANNOUNCE`; `None` when the features are unknown.
    pub guest_announce: Option<bool>,
    pub master: Option<String>,
    pub lowers: Vec<String>,
}

impl NetDev {
    /// A device known only by index, name and MAC: down, unclassified.
    pub fn new(ifindex: u32, ifname: String, mac: MacAddr) -> NetDev {
        NetDev {
            ifindex,
            ifname,
            mac,
            perm_mac: None,
            up: false,
            carrier: false,
            carrier_losses: 0,
            class: Class::Other,
            driver: None,
            on_pci: false,
            standby_bit: false,
            guest_announce: None,
            master: None,
            lowers: Vec::new(),
        }
    }

    /// The MAC to pair on: the permanent one, else the current one (a veth
    /// has no permanent address).
    pub fn key_mac(&self) -> MacAddr {
        self.perm_mac.unwrap_or(self.mac)
    }

    pub fn set_carrier(&mut self, carrier: bool) {
        if self.carrier && !carrier {
            self.carrier_losses = self.carrier_losses.wrapping_add(1);
        }
        self.carrier = carrier;
    }

    /// Build from a link's state and a sysfs read; what the read did not
    /// learn comes from `previous`, an earlier view of the same ifindex.
    /// `None` for a device without an Ethernet address, which can be
    /// neither primary nor standby.
    pub fn from_parts(
        link: &LinkState,
        facts: Option<Facts>,
        previous: Option<&NetDev>,
    ) -> Option<NetDev> {
        let ifname = link
            .ifname
            .clone()
            .or_else(|| previous.map(|p| p.ifname.clone()))?;
        let mac = link.mac.or_else(|| previous.map(|p| p.mac))?;
        let mut dev = match previous {
            Some(p) => p.clone(),
            None => NetDev::new(link.ifindex, String::new(), mac),
        };
        dev.ifname = ifname;
        dev.mac = mac;
        dev.perm_mac = link.perm_mac.or(dev.perm_mac);
        dev.up = link.up;
        dev.set_carrier(link.carrier);
        if let Some(facts) = facts {
            dev.apply(facts);
        }
        Some(dev)
    }

    /// Take in a sysfs read: known facts replace, unknown ones keep what an
    /// earlier read found. Upper/lower links change at run time and always
    /// come from the latest read.
    fn apply(&mut self, facts: Facts) {
        if let Some(standby) = facts.feature(STANDBY_BIT) {
            self.standby_bit = standby;
        }
        self.guest_announce = facts.feature(GUEST_ANNOUNCE_BIT).or(self.guest_announce);
        self.driver = facts.driver.or(self.driver.take());
        self.on_pci = facts.on_pci.unwrap_or(self.on_pci);
        self.master = facts.master;
        self.lowers = facts.lowers;
        self.class = self.classify();
    }

    fn classify(&self) -> Class {
        let virtio = self.driver.as_deref() == Some(VIRTIO_NET);
        // Lowers first: the master shares its parent (driver, features) with
        // the standby. Other uppers (bridges, bonds, VLANs) are no part of
        // failover.
        if !self.lowers.is_empty() {
            return if virtio {
                Class::FailoverMaster
            } else {
                Class::Other
            };
        }
        if virtio && self.standby_bit {
            Class::Standby
        } else if self.on_pci && !virtio {
            Class::PrimaryCandidate
        } else {
            Class::Other
        }
    }
}

/// What changed, as [`Discovery::process`] reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DiscoveryEvent {
    Added(NetDev),
    /// Anything but the name changed (state, addresses, classification).
    Changed(NetDev),
    Removed {
        ifindex: u32,
        ifname: String,
    },
    Renamed {
        ifindex: u32,
        old: String,
        new: String,
    },
    /// `IFLA_EVENT_NOTIFY_PEERS`: virtio-net's "I was migrated".
    NotifyPeers {
        ifindex: u32,
    },
}

/// The device table and how events change it; no sockets, so tests drive it.
#[derive(Debug)]
pub struct Devices {
    sysfs: Sysfs,
    devices: BTreeMap<u32, NetDev>,
}

impl Devices {
    pub fn new(sysfs: Sysfs) -> Devices {
        Devices {
            sysfs,
            devices: BTreeMap::new(),
        }
    }

    pub fn get(&self) -> &BTreeMap<u32, NetDev> {
        &self.devices
    }

    /// One rtnetlink event.
    pub fn link_event(&mut self, event: LinkEvent, out: &mut Vec<DiscoveryEvent>) {
        match event {
            LinkEvent::Changed(state) => self.link_state(&state, out),
            LinkEvent::Removed { ifindex, ifname } => {
                if let Some(dev) = self.devices.remove(&ifindex) {
                    out.push(DiscoveryEvent::Removed {
                        ifindex,
                        ifname: ifname.unwrap_or(dev.ifname),
                    });
                }
            }
            // The caller rescans: only it can dump.
            LinkEvent::Overrun => {}
        }
    }

    /// A full list of links (a dump): devices not in it are gone.
    pub fn resync(&mut self, links: &[LinkState], out: &mut Vec<DiscoveryEvent>) {
        let gone: Vec<u32> = self
            .devices
            .keys()
            .copied()
            .filter(|ifindex| !links.iter().any(|l| l.ifindex == *ifindex))
            .collect();
        for ifindex in gone {
            self.link_event(
                LinkEvent::Removed {
                    ifindex,
                    ifname: None,
                },
                out,
            );
        }
        for link in links {
            self.link_state(link, out);
        }
    }

    /// A udev event: read sysfs again for the device it names. Existence and
    /// names stay rtnetlink's business: udevd's events lag, and a stale
    /// `move` must not undo a later rename.
    pub fn udev_event(&mut self, event: &UdevEvent, out: &mut Vec<DiscoveryEvent>) {
        if event.action == "remove" {
            return;
        }
        let ifindex = event.ifindex.or_else(|| {
            let name = event.ifname.as_deref()?;
            self.devices
                .values()
                .find(|d| d.ifname == name)
                .map(|d| d.ifindex)
        });
        let Some(dev) = ifindex.and_then(|i| self.devices.get_mut(&i)) else {
            return;
        };
        if let Some(facts) = self.sysfs.read(&dev.ifname, dev.ifindex) {
            let before = dev.clone();
            dev.apply(facts);
            if *dev != before {
                out.push(DiscoveryEvent::Changed(dev.clone()));
            }
        }
    }

    fn link_state(&mut self, link: &LinkState, out: &mut Vec<DiscoveryEvent>) {
        let previous = self.devices.get(&link.ifindex);
        let name = link
            .ifname
            .as_deref()
            .or(previous.map(|p| p.ifname.as_str()));
        let facts = name.and_then(|name| self.sysfs.read(name, link.ifindex));
        let Some(dev) = NetDev::from_parts(link, facts, previous) else {
            return;
        };
        match self.devices.insert(dev.ifindex, dev.clone()) {
            None => out.push(DiscoveryEvent::Added(dev)),
            Some(old) => {
                if old.ifname != dev.ifname {
                    out.push(DiscoveryEvent::Renamed {
                        ifindex: dev.ifindex,
                        old: old.ifname.clone(),
                        new: dev.ifname.clone(),
                    });
                }
                let renamed_back = NetDev {
                    ifname: old.ifname.clone(),
                    ..dev.clone()
                };
                if renamed_back != old {
                    out.push(DiscoveryEvent::Changed(dev));
                }
            }
        }
        if link.notify_peers {
            out.push(DiscoveryEvent::NotifyPeers {
                ifindex: link.ifindex,
            });
        }
    }
}

/// Discovery over the live system, in the calling thread's network namespace.
pub struct Discovery {
    devices: Devices,
    links: LinkMonitor,
    udev: Option<UdevMonitor>,
}

impl Discovery {
    /// Subscribe to link notifications and udev, then list what exists.
    /// Without udev (no uevent socket) discovery still works from
    /// rtnetlink alone, with classifications read only on link events.
    pub fn open(sysfs_root: PathBuf) -> Result<Discovery> {
        // Subscribe before the dump, so no change falls between the two.
        let links = LinkMonitor::open().context("opening an rtnetlink link monitor")?;
        let udev = match UdevMonitor::open() {
            Ok(udev) => {
                tracing::debug!(source = ?udev.source(), "udev monitor on subsystem net");
                Some(udev)
            }
            Err(e) => {
                tracing::warn!("no udev monitor, following rtnetlink only: {e}");
                None
            }
        };
        let mut discovery = Discovery {
            devices: Devices::new(Sysfs::new(sysfs_root)),
            links,
            udev,
        };
        discovery.rescan()?;
        Ok(discovery)
    }

    /// The descriptors to poll for readability; then call [`process`](Self::process).
    pub fn fds(&self) -> Vec<RawFd> {
        let mut fds = vec![self.links.fd()];
        fds.extend(self.udev.as_ref().map(UdevMonitor::fd));
        fds
    }

    /// The devices now, keyed on ifindex. Complete right after `open`.
    pub fn devices(&self) -> &BTreeMap<u32, NetDev> {
        self.devices.get()
    }

    /// Read whatever is pending on both sockets and apply it.
    pub fn process(&mut self) -> Vec<DiscoveryEvent> {
        let mut link_events = Vec::new();
        if let Err(e) = self.links.read(|event| link_events.push(event)) {
            tracing::warn!("reading rtnetlink: {e}");
        }
        let overrun = link_events.contains(&LinkEvent::Overrun);
        let mut out = Vec::new();
        for event in link_events {
            self.devices.link_event(event, &mut out);
        }
        if let Some(udev) = &mut self.udev {
            for event in udev.read() {
                self.devices.udev_event(&event, &mut out);
            }
        }
        if overrun {
            tracing::warn!("rtnetlink overrun: rescanning links");
            match dump_links() {
                Ok(links) => self.devices.resync(&links, &mut out),
                Err(e) => tracing::warn!("rescanning links: {e}"),
            }
        }
        out
    }

    /// List the links again and report how they differ from what we knew.
    pub fn rescan(&mut self) -> Result<Vec<DiscoveryEvent>> {
        let links = dump_links().context("dumping links")?;
        let mut out = Vec::new();
        self.devices.resync(&links, &mut out);
        Ok(out)
    }
}

#[cfg(test)]
mod tests;
