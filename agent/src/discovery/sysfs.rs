//! What sysfs says about a netdev: its driver, bus, virtio features and
//! upper/lower links.
//!
//! Everything is read under a configurable root (`<root>/class/net/<ifname>`)
//! so tests classify fake trees. Sysfs describes devices by *name*, and names
//! change under udev renames: a directory whose `ifindex` is not the one asked
//! about belongs to another device and counts as absent. A file that cannot be
//! read is "unknown", never an error: a VF that has just appeared may still be
//! probed, and a device may vanish between two reads.

use std::fs;
use std::path::{Path, PathBuf};

/// `VIRTIO_NET_F_GUEST_ANNOUNCE`: the device announces itself after migration.
pub const GUEST_ANNOUNCE_BIT: usize = 21;
/// `VIRTIO_NET_F_STANDBY`: the device is the standby of a failover pair.
pub const STANDBY_BIT: usize = 62;

/// The virtio-net driver's name, as `device/driver` links it.
pub const VIRTIO_NET: &str = "virtio_net";

/// The facts one read of a netdev's sysfs directory gave. `None` fields could
/// not be read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Facts {
    /// The name of `device/driver`'s target.
    pub driver: Option<String>,
    /// `device/subsystem` is a `pci` bus; `Some(false)` when the netdev has no
    /// parent device at all (a veth, a bridge).
    pub on_pci: Option<bool>,
    /// `device/features`: one `'0'`/`'1'` per virtio feature bit.
    pub features: Option<Vec<bool>>,
    /// The upper device (`master` link, else an `upper_*` entry).
    pub master: Option<String>,
    /// The names of `lower_*` entries, sorted.
    pub lowers: Vec<String>,
}

impl Facts {
    /// Feature `bit`, when the features could be read; bits past the end of
    /// the string are off (the kernel prints every bit the device offers).
    pub fn feature(&self, bit: usize) -> Option<bool> {
        self.features
            .as_ref()
            .map(|bits| bits.get(bit).copied().unwrap_or(false))
    }
}

/// A sysfs tree: `/sys` on a live system, a temp dir in tests.
#[derive(Debug, Clone)]
pub struct Sysfs {
    root: PathBuf,
}

impl Sysfs {
    pub fn new(root: PathBuf) -> Sysfs {
        Sysfs { root }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Read what sysfs knows about `ifname`; `None` when its directory is
    /// missing or belongs to another ifindex (renamed or vanished since).
    pub fn read(&self, ifname: &str, ifindex: u32) -> Option<Facts> {
        // A name with a slash or a dot-dot would leave the tree.
        if ifname.is_empty() || ifname.contains('/') || ifname == "." || ifname == ".." {
            return None;
        }
        let dir = self.root.join("class/net").join(ifname);
        let entries = fs::read_dir(&dir).ok()?;
        // Fake trees may omit `ifindex`; only a different number disqualifies.
        if let Some(found) = read_trimmed(&dir.join("ifindex")).and_then(|s| s.parse::<u32>().ok())
        {
            if found != ifindex {
                return None;
            }
        }

        let mut facts = Facts::default();
        let mut upper = None;
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if let Some(lower) = name.strip_prefix("lower_") {
                facts.lowers.push(lower.to_owned());
            } else if let Some(name) = name.strip_prefix("upper_") {
                upper = Some(name.to_owned());
            }
        }
        facts.lowers.sort();
        facts.master = link_name(&dir.join("master")).or(upper);

        let device = dir.join("device");
        if fs::symlink_metadata(&device).is_err() {
            // No parent device: a virtual netdev. Nothing more to learn.
            facts.on_pci = Some(false);
            return Some(facts);
        }
        facts.driver = link_name(&device.join("driver"));
        facts.on_pci = fs::read_link(device.join("subsystem"))
            .ok()
            .map(|bus| is_pci_bus(&bus));
        facts.features = read_trimmed(&device.join("features")).and_then(|s| parse_features(&s));
        Some(facts)
    }
}

/// `.../bus/pci` (the target of a PCI device's `subsystem` link).
fn is_pci_bus(path: &Path) -> bool {
    let mut components = path.components().rev();
    let last = components.next().map(|c| c.as_os_str());
    let parent = components.next().map(|c| c.as_os_str());
    last == Some("pci".as_ref()) && parent == Some("bus".as_ref())
}

/// The last component of a symlink's target.
fn link_name(path: &Path) -> Option<String> {
    let target = fs::read_link(path).ok()?;
    Some(target.file_name()?.to_str()?.to_owned())
}

fn read_trimmed(path: &Path) -> Option<String> {
    fs::read_to_string(path).ok().map(|s| s.trim().to_owned())
}

/// `"0101..."` into bits; anything else is unreadable.
fn parse_features(s: &str) -> Option<Vec<bool>> {
    s.chars()
        .map(|c| match c {
            '0' => Some(false),
            '1' => Some(true),
            _ => None,
        })
        .collect()
}

/// Fake sysfs trees laid out like the kernel's, for tests here and in
/// pairing.
#[cfg(test)]
pub mod fake {
    use std::fs;
    use std::os::unix::fs::symlink;
    use std::path::{Path, PathBuf};
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::{Sysfs, GUEST_ANNOUNCE_BIT, STANDBY_BIT};

    /// A features string with `bits` set, 64 characters like QEMU's.
    pub fn features(bits: &[usize]) -> String {
        (0..64)
            .map(|i| if bits.contains(&i) { '1' } else { '0' })
            .collect()
    }

    /// QEMU's `failover=on` features: STATUS, CTRL_VQ, STANDBY and,
    /// unless `guest_announce=off`, GUEST_ANNOUNCE.
    pub fn standby_features(guest_announce: bool) -> String {
        let mut bits = vec![16, 17, STANDBY_BIT];
        if guest_announce {
            bits.push(GUEST_ANNOUNCE_BIT);
        }
        features(&bits)
    }

    /// A temp directory shaped like `/sys`, removed on drop.
    pub struct FakeSysfs {
        root: PathBuf,
    }

    impl FakeSysfs {
        pub fn create() -> FakeSysfs {
            static NEXT: AtomicU32 = AtomicU32::new(0);
            let root = std::env::temp_dir().join(format!(
                "vfailover-sysfs-{}-{}",
                std::process::id(),
                NEXT.fetch_add(1, Ordering::Relaxed)
            ));
            let _ = fs::remove_dir_all(&root);
            for dir in [
                "class/net",
                "bus/pci/drivers",
                "bus/virtio/drivers",
                "devices",
            ] {
                fs::create_dir_all(root.join(dir)).expect("fake sysfs");
            }
            FakeSysfs { root }
        }

        pub fn sysfs(&self) -> Sysfs {
            Sysfs::new(self.root.clone())
        }

        pub fn root(&self) -> &Path {
            &self.root
        }

        /// A virtio-net device at PCI `slot` (`virtio<n>` under it), with
        /// its netdev `ifname`; `features` `None` leaves the file out.
        /// Returns the virtio device's directory, to hang a master on.
        pub fn virtio(
            &self,
            ifname: &str,
            ifindex: u32,
            slot: &str,
            features: Option<&str>,
        ) -> PathBuf {
            let pci = self.pci_device(slot, "virtio-pci");
            let dev = pci.join(format!("virtio{ifindex}"));
            fs::create_dir_all(&dev).expect("fake sysfs");
            self.driver(&dev, "virtio", "virtio_net");
            if let Some(features) = features {
                fs::write(dev.join("features"), format!("{features}\n")).expect("fake sysfs");
            }
            self.netdev(&dev, ifname, ifindex);
            dev
        }

        /// A PCI NIC (a VF: e1000e, ixgbevf, ...) at `slot`.
        pub fn pci_nic(&self, ifname: &str, ifindex: u32, slot: &str, driver: &str) {
            let pci = self.pci_device(slot, driver);
            self.netdev(&pci, ifname, ifindex);
        }

        /// A netdev without a parent device (veth, bridge).
        pub fn virtual_netdev(&self, ifname: &str, ifindex: u32) {
            let dir = self.root.join("devices/virtual/net").join(ifname);
            fs::create_dir_all(&dir).expect("fake sysfs");
            self.class_link(&dir, ifname, ifindex);
        }

        /// A netdev `ifname` whose parent is `device` (which may already
        /// have one: net_failover's master shares the standby's).
        pub fn netdev(&self, device: &Path, ifname: &str, ifindex: u32) {
            let dir = device.join("net").join(ifname);
            fs::create_dir_all(&dir).expect("fake sysfs");
            symlink(device, dir.join("device")).expect("fake sysfs");
            self.class_link(&dir, ifname, ifindex);
        }

        /// `upper` enslaves `lower`: `lower_*` on one side, `upper_*` and
        /// `master` on the other.
        pub fn enslave(&self, upper: &str, lower: &str) {
            let up = self.root.join("class/net").join(upper);
            let low = self.root.join("class/net").join(lower);
            symlink(&low, up.join(format!("lower_{lower}"))).expect("fake sysfs");
            symlink(&up, low.join(format!("upper_{upper}"))).expect("fake sysfs");
            symlink(&up, low.join("master")).expect("fake sysfs");
        }

        /// Rename the netdev's directory (its `class/net` link), as the
        /// kernel does on `ip link set X name Y`.
        pub fn rename(&self, old: &str, new: &str) {
            let class = self.root.join("class/net");
            let target = fs::read_link(class.join(old)).expect("fake sysfs");
            let renamed = target.with_file_name(new);
            fs::rename(&target, &renamed).expect("fake sysfs");
            fs::remove_file(class.join(old)).expect("fake sysfs");
            symlink(&renamed, class.join(new)).expect("fake sysfs");
        }

        /// Make `device/features` of `ifname` unreadable (a directory).
        pub fn break_features(&self, ifname: &str) {
            let features = self
                .root
                .join("class/net")
                .join(ifname)
                .join("device/features");
            let _ = fs::remove_file(&features);
            fs::create_dir_all(features).expect("fake sysfs");
        }

        /// Remove the netdev `ifname` entirely.
        pub fn remove(&self, ifname: &str) {
            let class = self.root.join("class/net").join(ifname);
            if let Ok(target) = fs::read_link(&class) {
                let _ = fs::remove_dir_all(target);
            }
            let _ = fs::remove_file(class);
        }

        fn pci_device(&self, slot: &str, driver: &str) -> PathBuf {
            let dev = self.root.join("devices/pci0000:00").join(slot);
            if !dev.exists() {
                fs::create_dir_all(&dev).expect("fake sysfs");
                self.driver(&dev, "pci", driver);
            }
            dev
        }

        fn driver(&self, dev: &Path, bus: &str, driver: &str) {
            let bus = self.root.join("bus").join(bus);
            let drv = bus.join("drivers").join(driver);
            fs::create_dir_all(&drv).expect("fake sysfs");
            symlink(drv, dev.join("driver")).expect("fake sysfs");
            symlink(bus, dev.join("subsystem")).expect("fake sysfs");
        }

        fn class_link(&self, dir: &Path, ifname: &str, ifindex: u32) {
            fs::write(dir.join("ifindex"), format!("{ifindex}\n")).expect("fake sysfs");
            symlink(dir, self.root.join("class/net").join(ifname)).expect("fake sysfs");
        }
    }

    impl Drop for FakeSysfs {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.root);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::fake::*;
    use super::*;

    #[test]
    fn virtio_standby_with_and_without_guest_announce() {
        let fake = FakeSysfs::create();
        fake.virtio("ens3", 2, "0000:00:03.0", Some(&standby_features(true)));
        fake.virtio("ens5", 3, "0000:00:05.0", Some(&standby_features(false)));
        let sysfs = fake.sysfs();

        let on = sysfs.read("ens3", 2).expect("ens3");
        assert_eq!(on.driver.as_deref(), Some(VIRTIO_NET));
        assert_eq!(
            on.on_pci,
            Some(false),
            "a virtio netdev's parent is on the virtio bus"
        );
        assert_eq!(on.feature(STANDBY_BIT), Some(true));
        assert_eq!(on.feature(GUEST_ANNOUNCE_BIT), Some(true));
        assert!(on.lowers.is_empty() && on.master.is_none());

        let off = sysfs.read("ens5", 3).expect("ens5");
        assert_eq!(off.feature(STANDBY_BIT), Some(true));
        assert_eq!(off.feature(GUEST_ANNOUNCE_BIT), Some(false));
    }

    #[test]
    fn three_netdev_layout() {
        let fake = FakeSysfs::create();
        let virtio = fake.virtio("ens3", 3, "0000:00:03.0", Some(&standby_features(true)));
        fake.netdev(&virtio, "eth0", 2);
        fake.pci_nic("ens4", 4, "0000:00:04.0", "e1000e");
        fake.enslave("eth0", "ens3");
        fake.enslave("eth0", "ens4");
        let sysfs = fake.sysfs();

        let master = sysfs.read("eth0", 2).expect("eth0");
        assert_eq!(master.lowers, ["ens3", "ens4"]);
        // Same parent as the standby: driver and features alone would lie.
        assert_eq!(master.driver.as_deref(), Some(VIRTIO_NET));
        assert_eq!(master.feature(STANDBY_BIT), Some(true));

        let standby = sysfs.read("ens3", 3).expect("ens3");
        assert_eq!(standby.master.as_deref(), Some("eth0"));
        assert!(standby.lowers.is_empty());

        let primary = sysfs.read("ens4", 4).expect("ens4");
        assert_eq!(primary.driver.as_deref(), Some("e1000e"));
        assert_eq!(primary.on_pci, Some(true));
        assert_eq!(primary.features, None);
        assert_eq!(primary.master.as_deref(), Some("eth0"));
    }

    #[test]
    fn veth_has_no_device() {
        let fake = FakeSysfs::create();
        fake.virtual_netdev("veth0", 9);
        let facts = fake.sysfs().read("veth0", 9).expect("veth0");
        assert_eq!(facts.driver, None);
        assert_eq!(facts.on_pci, Some(false));
        assert_eq!(facts.features, None);
    }

    #[test]
    fn missing_unreadable_or_odd_features_are_unknown() {
        let fake = FakeSysfs::create();
        fake.virtio("ens3", 2, "0000:00:03.0", None);
        fake.virtio("ens5", 3, "0000:00:05.0", Some("01x1"));
        fake.virtio("ens6", 4, "0000:00:06.0", Some(&standby_features(true)));
        fake.break_features("ens6");
        let sysfs = fake.sysfs();
        for (name, ifindex) in [("ens3", 2), ("ens5", 3), ("ens6", 4)] {
            let facts = sysfs.read(name, ifindex).expect(name);
            assert_eq!(facts.features, None, "{name}");
            assert_eq!(facts.feature(GUEST_ANNOUNCE_BIT), None, "{name}");
            assert_eq!(facts.driver.as_deref(), Some(VIRTIO_NET), "{name}");
        }
    }

    #[test]
    fn short_features_string_has_high_bits_off() {
        let fake = FakeSysfs::create();
        fake.virtio("ens3", 2, "0000:00:03.0", Some("0000000000000000000001"));
        let facts = fake.sysfs().read("ens3", 2).expect("ens3");
        assert_eq!(facts.feature(GUEST_ANNOUNCE_BIT), Some(true));
        assert_eq!(facts.feature(STANDBY_BIT), Some(false));
    }

    #[test]
    fn absent_renamed_or_foreign_directories_are_none() {
        let fake = FakeSysfs::create();
        fake.pci_nic("ens4", 4, "0000:00:04.0", "ixgbevf");
        let sysfs = fake.sysfs();
        assert!(sysfs.read("ens4", 4).is_some());
        assert_eq!(sysfs.read("ens4", 5), None, "another device holds the name");
        assert_eq!(sysfs.read("nope", 4), None);
        assert_eq!(sysfs.read("../..", 4), None);
        assert_eq!(sysfs.read("", 4), None);
        fake.rename("ens4", "eth1");
        assert_eq!(sysfs.read("ens4", 4), None);
        assert_eq!(
            sysfs.read("eth1", 4).and_then(|f| f.driver),
            Some("ixgbevf".into())
        );
    }
}
