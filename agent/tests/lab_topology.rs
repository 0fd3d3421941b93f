//! The namespace lab itself: topology, migration steps, the blackhole a missing announce
//! leaves, and cleanup (also after a panic and after a SIGKILL). Needs root; skipped
//! otherwise, except under `CI=true`, where missing root is a failure.

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use std::process::Command;
use std::sync::Mutex;
use std::time::Duration;

use vfailover::lab::{
    root_or_skip, Lab, LabOptions, Ns, GUEST_KERNEL_V4, PEER_V4, PRIMARY, PRIMARY_FAR, STANDBY,
    STANDBY_FAR, TOR_DST_PORT, TOR_SRC_PORT,
};

/// Names from `ip netns list` (`name (id: 3)` → `name`).
fn netns_list() -> Vec<String> {
    let out = Command::new("ip").args(["netns", "list"]).output().unwrap();
    assert!(out.status.success(), "ip netns list: {out:?}");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect()
}

fn assert_all_gone(names: &[String]) {
    assert_eq!(names.len(), 5, "{names:?}");
    let left = netns_list();
    for name in names {
        assert!(!left.contains(name), "{name} survived: {left:?}");
    }
}

/// The settings that keep the guest kernel and the fabric from moving the switch's MAC entry,
/// applied inside the lab's namespaces and not in the test's own.
fn assert_quiet_and_configured(lab: &Lab) {
    let sysctl = |ns, key: &str| {
        let out = lab.exec(ns, &["cat", &format!("/proc/sys/{key}")]).unwrap();
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    };
    for ns in [Ns::Guest, Ns::Src, Ns::Dst, Ns::Tor] {
        assert_eq!(sysctl(ns, "net/ipv6/conf/all/disable_ipv6"), "1", "{ns}");
    }
    assert_eq!(sysctl(Ns::Guest, "net/ipv4/conf/all/arp_ignore"), "1");
    assert_eq!(sysctl(Ns::Guest, "net/ipv4/conf/all/arp_announce"), "2");
    assert_eq!(sysctl(Ns::Peer, "net/ipv6/conf/all/disable_ipv6"), "0");
    assert!(lab
        .ip(Ns::Guest, &["-6", "addr", "show"])
        .unwrap()
        .trim()
        .is_empty());
    let peer6 = lab
        .ip(Ns::Peer, &["-6", "addr", "show", "dev", "eth0"])
        .unwrap();
    assert!(peer6.contains("fd00:213::1/64"), "{peer6}");

    // Linux keeps the bridge ageing time in centiseconds: 300 s is 30000.
    let tor = lab.ip(Ns::Tor, &["-d", "link", "show", "br0"]).unwrap();
    assert!(
        tor.contains("ageing_time 30000") && tor.contains("stp_state 0"),
        "{tor}"
    );
    let offloads = lab.exec(Ns::Peer, &["ethtool", "-k", "eth0"]).unwrap();
    let offloads = String::from_utf8(offloads.stdout).unwrap();
    for feature in [
        "tcp-segmentation-offload: off",
        "generic-segmentation-offload: off",
        "generic-receive-offload: off",
        "tx-checksumming: off",
    ] {
        assert!(offloads.contains(feature), "{feature}: {offloads}");
    }
}

const GUEST: IpAddr = IpAddr::V4(GUEST_KERNEL_V4);

#[test]
fn migration_steps_and_the_blackhole() {
    if !root_or_skip() {
        return;
    }
    let lab = Lab::create(LabOptions::default()).unwrap();
    let names = lab.namespaces();
    let mac = lab.mac();
    for name in &names {
        assert!(netns_list().contains(name), "{name} missing");
    }
    assert_eq!(lab.link_mac(Ns::Guest, PRIMARY).unwrap(), mac);
    assert_eq!(lab.link_mac(Ns::Guest, STANDBY).unwrap(), mac);
    assert_quiet_and_configured(&lab);

    assert!(
        lab.ping(Ns::Peer, GUEST, 3).unwrap(),
        "peer cannot reach the guest kernel"
    );
    // The guest answered through vf0, so the switch learned its MAC towards the src host.
    assert_eq!(
        lab.fdb_port(Ns::Tor, mac).unwrap().as_deref(),
        Some(TOR_SRC_PORT)
    );
    assert_eq!(
        lab.fdb_port(Ns::Src, mac).unwrap().as_deref(),
        Some(PRIMARY_FAR)
    );

    // Threads inside namespaces: a kernel UDP socket in the guest hears one in the peer.
    // Binding to the peer's address proves the closure really runs in the peer namespace.
    let (port_tx, port_rx) = std::sync::mpsc::channel();
    let guest = lab
        .spawn_in(Ns::Guest, move || {
            let sock = UdpSocket::bind((GUEST_KERNEL_V4, 0)).unwrap();
            sock.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
            port_tx.send(sock.local_addr().unwrap().port()).unwrap();
            let mut buf = [0u8; 64];
            let (n, from) = sock.recv_from(&mut buf).unwrap();
            (buf[..n].to_vec(), from)
        })
        .unwrap();
    let port = port_rx.recv_timeout(Duration::from_secs(3)).unwrap();
    lab.in_ns(Ns::Peer, || {
        let sock = UdpSocket::bind((PEER_V4, 0)).unwrap();
        sock.send_to(b"hello", SocketAddr::from((GUEST_KERNEL_V4, port)))
            .unwrap();
    })
    .unwrap();
    let (payload, from) = guest.join().unwrap();
    assert_eq!(payload, b"hello");
    assert_eq!(from.ip(), IpAddr::V4(PEER_V4));

    lab.unplug().unwrap();
    assert!(!lab.links(Ns::Guest).unwrap().iter().any(|l| l == PRIMARY));
    assert!(!lab.links(Ns::Src).unwrap().iter().any(|l| l == PRIMARY_FAR));
    assert!(lab.migrate().is_ok());
    assert!(lab.links(Ns::Dst).unwrap().iter().any(|l| l == STANDBY_FAR));
    assert!(!lab.links(Ns::Src).unwrap().iter().any(|l| l == STANDBY_FAR));
    assert!(lab.links(Ns::Guest).unwrap().iter().any(|l| l == STANDBY));
    assert_eq!(lab.standby_host(), Ns::Dst);
    // The switch has not noticed: it still sends the guest's frames to the old host.
    assert_eq!(
        lab.fdb_port(Ns::Tor, mac).unwrap().as_deref(),
        Some(TOR_SRC_PORT)
    );

    lab.replug().unwrap();
    assert_eq!(lab.primary_host(), Some(Ns::Dst));
    assert_eq!(lab.link_mac(Ns::Guest, PRIMARY).unwrap(), mac);
    assert!(lab.links(Ns::Dst).unwrap().iter().any(|l| l == PRIMARY_FAR));
    // The blackhole: the peer's frames still go to src, where nothing has the MAC any more.
    assert!(
        !lab.ping(Ns::Peer, GUEST, 2).unwrap(),
        "expected a blackhole before an announce"
    );
    assert_eq!(
        lab.fdb_port(Ns::Tor, mac).unwrap().as_deref(),
        Some(TOR_SRC_PORT)
    );

    // Any frame from the guest fixes it; here the guest kernel's own ping stands in for
    // the announce vfailover sends.
    assert!(lab.ping(Ns::Guest, IpAddr::V4(PEER_V4), 1).unwrap());
    assert_eq!(
        lab.fdb_port(Ns::Tor, mac).unwrap().as_deref(),
        Some(TOR_DST_PORT)
    );
    assert!(
        lab.ping(Ns::Peer, GUEST, 3).unwrap(),
        "the guest kernel is back on vf0"
    );

    drop(lab);
    assert_all_gone(&names);
}

#[test]
fn steps_out_of_order_are_refused() {
    if !root_or_skip() {
        return;
    }
    let lab = Lab::create(LabOptions::default()).unwrap();
    let err = lab.migrate().unwrap_err();
    assert!(err.to_string().contains("unplug"), "{err:#}");
    assert!(lab.replug().is_err());
    lab.unplug().unwrap();
    assert!(lab.unplug().is_err());
    // A replug without a migration: the VF comes back on the same host.
    lab.replug().unwrap();
    assert_eq!(lab.primary_host(), Some(Ns::Src));
    // Errors name the command and carry its stderr.
    let err = lab
        .ip(Ns::Guest, &["link", "del", "nosuchlink"])
        .unwrap_err();
    let msg = format!("{err:#}");
    assert!(
        msg.contains("link del nosuchlink") && msg.contains("nosuchlink"),
        "{msg}"
    );
    // teardown is idempotent, and Drop after it has nothing left to do.
    let names = lab.namespaces();
    lab.teardown().unwrap();
    lab.teardown().unwrap();
    assert!(lab.namespaces().is_empty());
    assert!(lab.in_ns(Ns::Peer, || ()).is_err());
    drop(lab);
    assert_all_gone(&names);
}

#[test]
fn a_panic_inside_a_namespace_still_cleans_up() {
    if !root_or_skip() {
        return;
    }
    let names = Mutex::new(Vec::new());
    let result = catch_unwind(AssertUnwindSafe(|| {
        let lab = Lab::create(LabOptions::default()).unwrap();
        *names.lock().unwrap() = lab.namespaces();
        lab.in_ns(Ns::Peer, || panic!("boom in the peer")).unwrap();
    }));
    let panic = result.unwrap_err();
    assert_eq!(panic.downcast_ref::<&str>(), Some(&"boom in the peer"));
    assert_all_gone(&names.into_inner().unwrap());
}

#[test]
fn cleanup_stale_removes_namespaces_of_dead_processes() {
    if !root_or_skip() {
        return;
    }
    // A pid that ran and is gone: a lab killed with SIGKILL leaves exactly this behind.
    let mut child = Command::new("true").spawn().unwrap();
    let dead = child.id();
    child.wait().unwrap();
    let stale = format!("vfl-{dead}-dead00-guest");
    let ok = Command::new("ip")
        .args(["netns", "add", &stale])
        .status()
        .unwrap();
    assert!(ok.success());
    let live = Lab::create(LabOptions::default()).unwrap();

    let removed = Lab::cleanup_stale().unwrap();
    assert!(removed.contains(&stale), "{removed:?}");
    assert!(!Path::new("/var/run/netns").join(&stale).exists());
    // This process's own lab is alive and stays.
    for name in live.namespaces() {
        assert!(netns_list().contains(&name), "{name} was removed");
    }
}
