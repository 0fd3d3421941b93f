use super::fake::{standby_features, FakeSysfs};
use super::*;

const MAC: MacAddr = MacAddr([0x52, 0x54, 0, 0x12, 0x34, 0x56]);

fn link(ifindex: u32, ifname: &str, perm: Option<MacAddr>, running: bool) -> LinkState {
    LinkState {
        ifindex,
        ifname: Some(ifname.into()),
        mac: Some(MAC),
        perm_mac: perm,
        up: running,
        carrier: running,
        notify_peers: false,
    }
}

fn changed(devices: &mut Devices, state: LinkState) -> Vec<DiscoveryEvent> {
    let mut out = Vec::new();
    devices.link_event(LinkEvent::Changed(state), &mut out);
    out
}

/// net_failover's three netdevs: master `eth0`, standby `ens3`, primary `ens4`.
fn three_netdevs(fake: &FakeSysfs) -> Devices {
    let virtio = fake.virtio("ens3", 3, "0000:00:03.0", Some(&standby_features(true)));
    fake.netdev(&virtio, "eth0", 2);
    fake.pci_nic("ens4", 4, "0000:00:04.0", "e1000e");
    fake.enslave("eth0", "ens3");
    fake.enslave("eth0", "ens4");
    let mut devices = Devices::new(fake.sysfs());
    let links = [
        link(2, "eth0", Some(MAC), true),
        link(3, "ens3", Some(MAC), true),
        link(4, "ens4", Some(MAC), true),
    ];
    let mut out = Vec::new();
    devices.resync(&links, &mut out);
    assert_eq!(out.len(), 3);
    devices
}

#[test]
fn classifies_the_three_netdev_layout() {
    let fake = FakeSysfs::create();
    let devices = three_netdevs(&fake);
    let d = devices.get();
    assert_eq!(d[&2].class, Class::FailoverMaster);
    assert_eq!(d[&2].lowers, ["ens3", "ens4"]);
    assert_eq!(d[&3].class, Class::Standby);
    assert_eq!(d[&3].guest_announce, Some(true));
    assert_eq!(d[&3].master.as_deref(), Some("eth0"));
    assert_eq!(d[&4].class, Class::PrimaryCandidate);
    assert!(d[&4].on_pci);
    assert_eq!(d[&4].driver.as_deref(), Some("e1000e"));
    assert!(d.values().all(|dev| dev.key_mac() == MAC));
}

#[test]
fn classifies_single_devices() {
    let fake = FakeSysfs::create();
    fake.virtio("ens3", 3, "0000:00:03.0", Some(&standby_features(false)));
    fake.virtio("ens5", 5, "0000:00:05.0", Some(&fake::features(&[16, 17])));
    fake.pci_nic("ens6", 6, "0000:00:06.0", "ixgbevf");
    fake.virtual_netdev("veth0", 7);
    fake.virtio("ens8", 8, "0000:00:08.0", None);
    let mut devices = Devices::new(fake.sysfs());
    for (i, name) in [
        (3, "ens3"),
        (5, "ens5"),
        (6, "ens6"),
        (7, "veth0"),
        (8, "ens8"),
    ] {
        changed(&mut devices, link(i, name, None, true));
    }
    let d = devices.get();
    assert_eq!(d[&3].class, Class::Standby);
    assert_eq!(d[&3].guest_announce, Some(false));
    assert_eq!(d[&5].class, Class::Other, "virtio without STANDBY");
    assert_eq!(d[&6].class, Class::PrimaryCandidate);
    assert_eq!(d[&6].guest_announce, None);
    assert_eq!(d[&7].class, Class::Other);
    assert!(!d[&7].on_pci && d[&7].driver.is_none());
    assert_eq!(
        d[&8].class,
        Class::Other,
        "features missing: STANDBY unknown"
    );
    assert_eq!(d[&8].guest_announce, None);
}

#[test]
fn bridge_with_lowers_is_not_a_failover_master() {
    let fake = FakeSysfs::create();
    fake.virtual_netdev("br0", 2);
    fake.virtual_netdev("veth0", 3);
    fake.enslave("br0", "veth0");
    let mut devices = Devices::new(fake.sysfs());
    changed(&mut devices, link(2, "br0", None, true));
    changed(&mut devices, link(3, "veth0", None, true));
    assert_eq!(devices.get()[&2].class, Class::Other);
    assert_eq!(devices.get()[&2].lowers, ["veth0"]);
    assert_eq!(devices.get()[&3].master.as_deref(), Some("br0"));
}

#[test]
fn rename_keeps_ifindex_and_classification() {
    let fake = FakeSysfs::create();
    fake.pci_nic("eth1", 4, "0000:00:04.0", "e1000e");
    let mut devices = Devices::new(fake.sysfs());
    let out = changed(&mut devices, link(4, "eth1", Some(MAC), false));
    assert!(matches!(&out[..], [DiscoveryEvent::Added(d)] if d.class == Class::PrimaryCandidate));

    // udev renames it while up; sysfs has the new name before rtnetlink tells.
    fake.rename("eth1", "ens4");
    let out = changed(&mut devices, link(4, "ens4", Some(MAC), false));
    assert_eq!(
        out,
        [DiscoveryEvent::Renamed {
            ifindex: 4,
            old: "eth1".into(),
            new: "ens4".into()
        }]
    );
    assert_eq!(devices.get()[&4].class, Class::PrimaryCandidate);

    // A rename with a state change reports both.
    let out = changed(&mut devices, link(4, "ens4", Some(MAC), true));
    assert!(matches!(&out[..], [DiscoveryEvent::Changed(d)] if d.up && d.carrier));
}

#[test]
fn unreadable_sysfs_keeps_the_earlier_classification() {
    let fake = FakeSysfs::create();
    fake.virtio("ens3", 3, "0000:00:03.0", Some(&standby_features(true)));
    let mut devices = Devices::new(fake.sysfs());
    changed(&mut devices, link(3, "ens3", None, true));
    assert_eq!(devices.get()[&3].class, Class::Standby);

    // Features unreadable: keep the bits; the directory gone (a device being
    // torn down, or a rename sysfs has not shown yet): keep everything.
    fake.break_features("ens3");
    let out = changed(&mut devices, link(3, "ens3", None, false));
    assert!(matches!(&out[..], [DiscoveryEvent::Changed(d)] if d.class == Class::Standby));
    fake.remove("ens3");
    changed(&mut devices, link(3, "ens3", None, true));
    assert_eq!(devices.get()[&3].class, Class::Standby);
    assert_eq!(devices.get()[&3].guest_announce, Some(true));
}

#[test]
fn late_sysfs_is_picked_up_on_the_next_event() {
    // A VF mid-probe: rtnetlink announces it before sysfs has its links.
    let fake = FakeSysfs::create();
    let mut devices = Devices::new(fake.sysfs());
    let out = changed(&mut devices, link(4, "ens4", Some(MAC), false));
    assert!(matches!(&out[..], [DiscoveryEvent::Added(d)] if d.class == Class::Other));

    fake.pci_nic("ens4", 4, "0000:00:04.0", "ixgbevf");
    let mut out = Vec::new();
    let event = UdevEvent {
        action: "add".into(),
        ifindex: Some(4),
        ifname: Some("ens4".into()),
    };
    devices.udev_event(&event, &mut out);
    assert!(matches!(&out[..], [DiscoveryEvent::Changed(d)] if d.class == Class::PrimaryCandidate));

    // The same event again changes nothing and says nothing.
    out.clear();
    devices.udev_event(&event, &mut out);
    assert!(out.is_empty());
}

#[test]
fn stale_udev_move_does_not_rename() {
    let fake = FakeSysfs::create();
    fake.virtual_netdev("c", 5);
    let mut devices = Devices::new(fake.sysfs());
    changed(&mut devices, link(5, "c", None, true));
    let mut out = Vec::new();
    // udevd reports `a -> b` after rtnetlink already said `c`.
    let event = UdevEvent {
        action: "move".into(),
        ifindex: Some(5),
        ifname: Some("b".into()),
    };
    devices.udev_event(&event, &mut out);
    assert!(out.is_empty());
    assert_eq!(devices.get()[&5].ifname, "c");
}

#[test]
fn remove_notify_and_resync() {
    let fake = FakeSysfs::create();
    let mut devices = three_netdevs(&fake);

    let mut state = link(3, "ens3", Some(MAC), true);
    state.notify_peers = true;
    let out = changed(&mut devices, state);
    assert_eq!(out, [DiscoveryEvent::NotifyPeers { ifindex: 3 }]);

    let mut out = Vec::new();
    devices.link_event(
        LinkEvent::Removed {
            ifindex: 4,
            ifname: None,
        },
        &mut out,
    );
    assert_eq!(
        out,
        [DiscoveryEvent::Removed {
            ifindex: 4,
            ifname: "ens4".into()
        }]
    );
    // Unknown devices vanish silently.
    out.clear();
    devices.link_event(
        LinkEvent::Removed {
            ifindex: 99,
            ifname: Some("x".into()),
        },
        &mut out,
    );
    assert!(out.is_empty());

    // After an overrun, a dump without eth0 and with a new device.
    fake.pci_nic("ens9", 9, "0000:00:09.0", "ixgbevf");
    devices.resync(
        &[
            link(3, "ens3", Some(MAC), true),
            link(9, "ens9", None, true),
        ],
        &mut out,
    );
    assert!(out.contains(&DiscoveryEvent::Removed {
        ifindex: 2,
        ifname: "eth0".into()
    }));
    assert!(out
        .iter()
        .any(|e| matches!(e, DiscoveryEvent::Added(d) if d.ifindex == 9)));
    assert_eq!(devices.get().keys().copied().collect::<Vec<_>>(), [3, 9]);
}

#[test]
fn devices_without_ethernet_address_are_skipped() {
    let fake = FakeSysfs::create();
    let mut devices = Devices::new(fake.sysfs());
    let mut state = link(10, "tun0", None, true);
    state.mac = None;
    assert!(changed(&mut devices, state).is_empty());
    assert!(devices.get().is_empty());
}

#[test]
fn key_mac_prefers_the_permanent_address() {
    let fake = FakeSysfs::create();
    let mut devices = Devices::new(fake.sysfs());
    let perm = MacAddr([2, 0, 0, 0, 0, 9]);
    changed(&mut devices, link(2, "a", Some(perm), true));
    changed(&mut devices, link(3, "b", None, true));
    assert_eq!(devices.get()[&2].key_mac(), perm);
    assert_eq!(devices.get()[&3].key_mac(), MAC);
}

#[test]
fn discovery_can_move_to_the_control_thread() {
    fn send<T: Send>() {}
    send::<Discovery>();
}

/// Discovery on the live kernel, in a namespace of its own.
mod netns {
    use std::fs::File;
    use std::process::Command;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::mpsc::{self, Receiver};
    use std::sync::Arc;
    use std::thread::{self, JoinHandle};
    use std::time::{Duration, Instant, SystemTime};

    use nix::sched::{setns, CloneFlags};

    use super::super::*;

    /// Root needed; without it the test is skipped, except under CI.
    fn root_or_skip() -> bool {
        if nix::unistd::geteuid().is_root() {
            return true;
        }
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "CI=true: this test must run as root"
        );
        eprintln!("skipped: needs root (network namespaces)");
        false
    }

    /// A namespace named for this run, deleted on drop (also on panic).
    struct Netns(String);

    impl Netns {
        fn new() -> Netns {
            let nanos = SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.subsec_nanos());
            let name = format!("vfd-{}-{nanos:x}", std::process::id());
            let ns = Netns(name);
            ns.cmd(&["netns", "add", &ns.0]);
            ns
        }

        fn ip(&self, args: &[&str]) -> std::process::Output {
            Command::new("ip")
                .args(["-n", &self.0])
                .args(args)
                .output()
                .expect("running ip")
        }

        fn ip_ok(&self, args: &[&str]) {
            let out = self.ip(args);
            assert!(
                out.status.success(),
                "ip {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }

        fn cmd(&self, args: &[&str]) {
            let status = Command::new("ip").args(args).status().expect("running ip");
            assert!(status.success(), "ip {args:?}");
        }
    }

    impl Drop for Netns {
        fn drop(&mut self) {
            let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
        }
    }

    /// Discovery on a thread inside the namespace; stopped and joined on
    /// drop, before the namespace goes.
    struct Watcher {
        stop: Arc<AtomicBool>,
        thread: Option<JoinHandle<()>>,
        events: Receiver<DiscoveryEvent>,
        start: BTreeMap<u32, NetDev>,
    }

    impl Watcher {
        fn spawn(ns: &Netns) -> Watcher {
            let file = File::open(format!("/run/netns/{}", ns.0)).expect("netns file");
            let stop = Arc::new(AtomicBool::new(false));
            let (tx, events) = mpsc::channel();
            let (start_tx, start_rx) = mpsc::channel();
            let flag = stop.clone();
            let thread = thread::spawn(move || {
                setns(&file, CloneFlags::CLONE_NEWNET).expect("setns");
                // /sys is the mount's, i.e. still the root namespace's:
                // classification here may say Other, which is fine.
                let mut discovery = Discovery::open("/sys".into()).expect("discovery");
                start_tx.send(discovery.devices().clone()).expect("start");
                while !flag.load(Ordering::Relaxed) {
                    let _ = crate::sys::poll_readable(&discovery.fds(), Duration::from_millis(50));
                    for event in discovery.process() {
                        if tx.send(event).is_err() {
                            return;
                        }
                    }
                }
            });
            let start = start_rx
                .recv_timeout(Duration::from_secs(10))
                .expect("discovery opened");
            Watcher {
                stop,
                thread: Some(thread),
                events,
                start,
            }
        }

        /// Events until one matches `want`, or a panic after 5 s.
        fn until(
            &self,
            what: &str,
            mut want: impl FnMut(&DiscoveryEvent) -> bool,
        ) -> Vec<DiscoveryEvent> {
            let deadline = Instant::now() + Duration::from_secs(5);
            let mut seen = Vec::new();
            while let Some(left) = deadline.checked_duration_since(Instant::now()) {
                if let Ok(event) = self.events.recv_timeout(left) {
                    let done = want(&event);
                    seen.push(event);
                    if done {
                        return seen;
                    }
                }
            }
            panic!("no {what} within 5 s; saw {seen:#?}");
        }
    }

    impl Drop for Watcher {
        fn drop(&mut self) {
            self.stop.store(true, Ordering::Relaxed);
            if let Some(thread) = self.thread.take() {
                let _ = thread.join();
            }
        }
    }

    fn ifindex(devices: &BTreeMap<u32, NetDev>, name: &str) -> u32 {
        devices
            .values()
            .find(|d| d.ifname == name)
            .unwrap_or_else(|| panic!("{name} in {devices:#?}"))
            .ifindex
    }

    #[test]
    fn rename_remove_add_in_a_namespace() {
        if !root_or_skip() {
            return;
        }
        let ns = Netns::new();
        ns.ip_ok(&[
            "link", "add", "vfd-a", "type", "veth", "peer", "name", "vfd-b",
        ]);
        ns.ip_ok(&["link", "set", "vfd-a", "up"]);
        ns.ip_ok(&["link", "set", "vfd-b", "up"]);
        let watcher = Watcher::spawn(&ns);
        let a = ifindex(&watcher.start, "vfd-a");
        assert!(watcher.start.contains_key(&1), "lo of the namespace");
        assert_eq!(watcher.start.len(), 3, "{:#?}", watcher.start);

        // Rename while up. Kernels before 6.2 refuse (EBUSY) unless the
        // device is down; then rename down and bring it back up.
        let live = ns.ip(&["link", "set", "vfd-a", "name", "vfd-r"]);
        if !live.status.success() {
            eprintln!(
                "live rename refused ({}); renaming while down",
                String::from_utf8_lossy(&live.stderr).trim()
            );
            ns.ip_ok(&["link", "set", "vfd-a", "down"]);
            ns.ip_ok(&["link", "set", "vfd-a", "name", "vfd-r"]);
            ns.ip_ok(&["link", "set", "vfd-r", "up"]);
        }
        let renamed = DiscoveryEvent::Renamed {
            ifindex: a,
            old: "vfd-a".into(),
            new: "vfd-r".into(),
        };
        watcher.until("Renamed", |e| *e == renamed);

        // Deleting one end of a veth removes both.
        ns.ip_ok(&["link", "del", "vfd-b"]);
        let seen = watcher.until("both Removed", {
            let mut left = 2;
            move |e| {
                if matches!(e, DiscoveryEvent::Removed { .. }) {
                    left -= 1;
                }
                left == 0
            }
        });
        assert!(seen.contains(&DiscoveryEvent::Removed {
            ifindex: a,
            ifname: "vfd-r".into()
        }));

        ns.ip_ok(&[
            "link",
            "add",
            "vfd-c",
            "address",
            "02:00:00:00:fd:01",
            "type",
            "veth",
            "peer",
            "name",
            "vfd-d",
        ]);
        let seen = watcher.until(
            "Added vfd-c",
            |e| matches!(e, DiscoveryEvent::Added(d) if d.ifname == "vfd-c"),
        );
        let Some(DiscoveryEvent::Added(c)) = seen.last() else {
            unreachable!("until returns at the match");
        };
        assert_eq!(c.mac, MacAddr([2, 0, 0, 0, 0xfd, 1]));
        assert_eq!(c.perm_mac, None, "a veth has no permanent address");
        assert_eq!(c.key_mac(), c.mac);
    }
}
