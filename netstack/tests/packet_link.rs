//! Root only: a `PacketLink` on a veth between two throwaway network
//! namespaces, `guest` (the link, plus the guest kernel's own 10.213.0.10)
//! and `peer` (a kernel that talks to both).
//!
//! Without root the test prints why and passes, except under `CI=true`,
//! where a skipped test would hide a broken setup, so it fails.

use std::fs::File;
use std::io::Read;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use nix::sched::{setns, CloneFlags};
use vfailover_netstack::link::packet::PacketLink;
use vfailover_netstack::link::{Health, Link, LinkError, LinkMode};
use vfailover_netstack::mac::MacAddr;

const US4: Ipv4Addr = Ipv4Addr::new(10, 213, 0, 20);
const US6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x213, 0, 0, 0, 0, 0, 0x20);
const KERNEL4: Ipv4Addr = Ipv4Addr::new(10, 213, 0, 10);
const PEER4: Ipv4Addr = Ipv4Addr::new(10, 213, 0, 1);
const MOVED4: Ipv4Addr = Ipv4Addr::new(10, 213, 0, 30);
const PORT: u16 = 5555;

/// Two network namespaces with run-unique names and a veth between them,
/// deleted on drop (also when the test panics). Deleting a namespace takes
/// its end of the veth, and with it the other end.
struct Lab {
    guest: String,
    peer: String,
    created: Vec<String>,
}

impl Lab {
    fn new() -> Lab {
        let tag = format!("{}-{:08x}", std::process::id(), random_u32());
        let mut lab = Lab {
            guest: format!("vfpk-guest-{tag}"),
            peer: format!("vfpk-peer-{tag}"),
            created: Vec::new(),
        };
        for ns in [lab.guest.clone(), lab.peer.clone()] {
            run("ip", &["netns", "add", &ns]);
            lab.created.push(ns);
        }
        let (g, p) = (lab.guest.as_str(), lab.peer.as_str());
        // Created inside the namespaces: nothing ever appears in the root one.
        run(
            "ip",
            &[
                "-n", g, "link", "add", "vg0", "type", "veth", "peer", "name", "vp0", "netns", p,
            ],
        );
        run(
            "ip",
            &["-n", g, "addr", "add", "10.213.0.10/24", "dev", "vg0"],
        );
        run(
            "ip",
            &["-n", p, "addr", "add", "10.213.0.1/24", "dev", "vp0"],
        );
        run(
            "ip",
            &[
                "-n",
                p,
                "addr",
                "add",
                "fd00:213::1/64",
                "dev",
                "vp0",
                "nodad",
            ],
        );
        for (ns, dev) in [(g, "vg0"), (p, "vp0"), (g, "lo"), (p, "lo")] {
            run("ip", &["-n", ns, "link", "set", dev, "up"]);
        }
        // Wire-sized frames with real checksums from the peer's kernel; the
        // stack sees frames as they would arrive from a NIC.
        run(
            "ip",
            &[
                "netns", "exec", p, "ethtool", "-K", "vp0", "tso", "off", "gso", "off", "tx", "off",
            ],
        );
        lab
    }

    /// Run `f` on a thread inside namespace `ns`. Sockets made there stay
    /// in `ns` wherever they are used afterwards.
    fn in_ns<T: Send + 'static>(&self, ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
        let path = format!("/run/netns/{ns}");
        thread::spawn(move || {
            let file = File::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
            setns(file, CloneFlags::CLONE_NEWNET).expect("setns");
            f()
        })
        .join()
        .expect("namespace thread panicked")
    }

    fn mac(&self, ns: &str, dev: &str) -> MacAddr {
        let out = run("ip", &["-n", ns, "-br", "link", "show", "dev", dev]);
        let field = out.split_whitespace().nth(2).expect("ip -br link output");
        field.parse().expect("MAC")
    }

    /// Make the peer's kernel send to `addr` without resolving it first.
    fn peer_neighbour(&self, addr: IpAddr, mac: MacAddr) {
        run(
            "ip",
            &[
                "-n",
                &self.peer,
                "neigh",
                "replace",
                &addr.to_string(),
                "lladdr",
                &mac.to_string(),
                "dev",
                "vp0",
                "nud",
                "permanent",
            ],
        );
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for ns in &self.created {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

fn run(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{cmd}: {e}"));
    assert!(
        out.status.success(),
        "{cmd} {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn random_u32() -> u32 {
    let mut b = [0; 4];
    File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .expect("/dev/urandom");
    u32::from_ne_bytes(b)
}

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

// Frame inspection, offsets behind a 14-byte Ethernet header.

fn ethertype(f: &[u8]) -> u16 {
    u16::from_be_bytes([f[12], f[13]])
}

fn ipv4_dst(f: &[u8]) -> Option<Ipv4Addr> {
    (ethertype(f) == 0x0800 && f.len() >= 34).then(|| Ipv4Addr::new(f[30], f[31], f[32], f[33]))
}

fn arp_target(f: &[u8]) -> Option<Ipv4Addr> {
    (ethertype(f) == 0x0806 && f.len() >= 42).then(|| Ipv4Addr::new(f[38], f[39], f[40], f[41]))
}

fn udp4_payload(f: &[u8]) -> Option<&[u8]> {
    let ihl = usize::from(f.get(14)? & 0x0f) * 4;
    (ethertype(f) == 0x0800 && f.get(23) == Some(&17)).then(|| f.get(14 + ihl + 8..))?
}

fn udp6_payload(f: &[u8]) -> Option<&[u8]> {
    (ethertype(f) == 0x86dd && f.get(20) == Some(&17)).then(|| f.get(62..))?
}

fn ns_target(f: &[u8]) -> Option<Ipv6Addr> {
    if ethertype(f) != 0x86dd || f.get(20) != Some(&58) || f.get(54) != Some(&135) {
        return None;
    }
    let t: [u8; 16] = f.get(62..78)?.try_into().ok()?;
    Some(t.into())
}

fn describe(f: &[u8]) -> String {
    format!(
        "{} bytes, type {:04x}: {:02x?}",
        f.len(),
        ethertype(f),
        &f[..f.len().min(48)]
    )
}

/// Do `send` up to `attempts` times, after each polling the link for
/// `wait`, until a received frame satisfies `want`. Returns every frame
/// received on the way (including the match).
fn send_until(
    link: &mut PacketLink,
    what: &str,
    mut send: impl FnMut(),
    want: impl Fn(&[u8]) -> bool,
) -> Vec<Vec<u8>> {
    const ATTEMPTS: usize = 10;
    const WAIT: Duration = Duration::from_millis(300);
    let mut seen = Vec::new();
    for _ in 0..ATTEMPTS {
        send();
        let deadline = Instant::now() + WAIT;
        while Instant::now() < deadline {
            link.recv(64, &mut |f| seen.push(f.to_vec()))
                .expect("recv on a healthy link");
            if seen.iter().any(|f| want(f)) {
                println!("received {what} ({} frames seen)", seen.len());
                return seen;
            }
            thread::sleep(Duration::from_millis(5));
        }
    }
    let seen: Vec<String> = seen.iter().map(|f| describe(f)).collect();
    panic!("never received {what}; got {seen:#?}");
}

/// Whether the UDP checksum of an IPv4 frame (option-less header) verifies.
fn udp4_checksum_ok(f: &[u8]) -> bool {
    let udp = &f[34..];
    let mut sum: u32 = f[26..34]
        .chunks(2)
        .chain(udp.chunks(2))
        .map(|w| u32::from(u16::from_be_bytes([w[0], *w.get(1).unwrap_or(&0)])))
        .sum();
    sum += 17 + udp.len() as u32;
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum == 0xffff
}

/// An Ethernet + IPv4 + UDP frame (UDP checksum 0: none, allowed on IPv4).
fn udp4_frame(
    dst_mac: MacAddr,
    src_mac: MacAddr,
    src: (Ipv4Addr, u16),
    dst: SocketAddr,
    payload: &[u8],
) -> Vec<u8> {
    let SocketAddr::V4(dst) = dst else {
        panic!("IPv4 only")
    };
    let total = (20 + 8 + payload.len()) as u16;
    let mut f = Vec::new();
    f.extend(dst_mac.0);
    f.extend(src_mac.0);
    f.extend(0x0800u16.to_be_bytes());
    let mut ip = vec![0x45, 0];
    ip.extend(total.to_be_bytes());
    ip.extend([0, 0, 0x40, 0, 64, 17, 0, 0]);
    ip.extend(src.0.octets());
    ip.extend(dst.ip().octets());
    let sum = ip
        .chunks(2)
        .map(|w| u32::from(u16::from_be_bytes([w[0], w[1]])))
        .sum::<u32>();
    let sum = (sum & 0xffff) + (sum >> 16);
    let sum = !((sum & 0xffff) + (sum >> 16)) as u16;
    ip[10..12].copy_from_slice(&sum.to_be_bytes());
    f.extend(ip);
    f.extend(src.1.to_be_bytes());
    f.extend(dst.port().to_be_bytes());
    f.extend((8 + payload.len() as u16).to_be_bytes());
    f.extend([0, 0]);
    f.extend(payload);
    f
}

#[test]
fn packet_link_on_veth() {
    if !is_root() {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("packet_link needs root (network namespaces, AF_PACKET) and CI=true");
        }
        println!("skipping packet_link: needs root (network namespaces, AF_PACKET)");
        return;
    }
    let lab = Lab::new();
    println!("namespaces {} and {}", lab.guest, lab.peer);
    let guest_mac = lab.mac(&lab.guest, "vg0");
    let peer_mac = lab.mac(&lab.peer, "vp0");

    let mut link = lab
        .in_ns(&lab.guest, || {
            PacketLink::open("vg0", &[IpAddr::V4(US4), IpAddr::V6(US6)])
        })
        .expect("open the packet link");
    assert_eq!(link.mode(), LinkMode::Packet);
    assert_eq!(link.ifname(), "vg0");
    assert_eq!(link.max_frame_len(), 1514);
    assert_eq!(link.fds().len(), 1);
    assert!(link.ifindex() > 0);
    assert_eq!(link.health(), Health::Up);

    let peer4 = lab
        .in_ns(&lab.peer, || UdpSocket::bind("0.0.0.0:0"))
        .expect("peer UDP socket");
    let peer6 = lab
        .in_ns(&lab.peer, || UdpSocket::bind("[::]:0"))
        .expect("peer UDP6 socket");

    // The peer's kernel resolving our addresses: ARP request and neighbour
    // solicitation (to the solicited-node group) come up.
    send_until(
        &mut link,
        "ARP request for 10.213.0.20",
        || drop(peer4.send_to(b"resolve", (US4, PORT))),
        |f| arp_target(f) == Some(US4),
    );
    send_until(
        &mut link,
        "neighbour solicitation for fd00:213::20",
        || drop(peer6.send_to(b"resolve", (US6, PORT))),
        |f| ns_target(f) == Some(US6),
    );

    // Datagrams to the stack's addresses come up, byte-exact.
    lab.peer_neighbour(US4.into(), guest_mac);
    lab.peer_neighbour(US6.into(), guest_mac);
    send_until(
        &mut link,
        "UDP to 10.213.0.20",
        || drop(peer4.send_to(b"to the stack", (US4, PORT))),
        |f| ipv4_dst(f) == Some(US4) && udp4_payload(f) == Some(b"to the stack"),
    );
    send_until(
        &mut link,
        "UDP to fd00:213::20",
        || drop(peer6.send_to(b"to the stack, v6", (US6, PORT))),
        |f| udp6_payload(f) == Some(b"to the stack, v6"),
    );

    // Traffic for the guest kernel's own address stays with the kernel: it
    // answers ping, and none of it (ARP included) reaches the link. The
    // marker sent after it arrives behind it on the same wire.
    run(
        "ip",
        &[
            "netns",
            "exec",
            &lab.peer,
            "ping",
            "-c",
            "3",
            "-i",
            "0.2",
            "-W",
            "2",
            "10.213.0.10",
        ],
    );
    for _ in 0..3 {
        peer4.send_to(b"to the kernel", (KERNEL4, PORT)).unwrap();
    }
    let seen = send_until(
        &mut link,
        "marker after traffic to 10.213.0.10",
        || drop(peer4.send_to(b"marker", (US4, PORT))),
        |f| udp4_payload(f) == Some(b"marker"),
    );
    for f in &seen {
        assert_ne!(
            ipv4_dst(f),
            Some(KERNEL4),
            "kernel's frame delivered: {}",
            describe(f)
        );
        assert_ne!(
            arp_target(f),
            Some(KERNEL4),
            "kernel's ARP delivered: {}",
            describe(f)
        );
    }

    // A frame the link sends reaches the peer's kernel.
    let sink = lab
        .in_ns(&lab.peer, || UdpSocket::bind((PEER4, 0)))
        .expect("peer sink socket");
    sink.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let frame = udp4_frame(
        peer_mac,
        guest_mac,
        (US4, 4000),
        sink.local_addr().unwrap(),
        b"from the stack",
    );
    let mut got = None;
    for _ in 0..10 {
        assert!(link
            .send(frame.len(), &mut |buf| buf.copy_from_slice(&frame))
            .unwrap());
        link.flush().unwrap();
        let mut buf = [0; 64];
        if let Ok((n, from)) = sink.recv_from(&mut buf) {
            got = Some((buf[..n].to_vec(), from));
            break;
        }
    }
    let (payload, from) = got.expect("the peer never received the link's frame");
    assert_eq!(payload, b"from the stack");
    assert_eq!(from, SocketAddr::from((US4, 4000)));
    println!("peer received the link's frame from {from}");

    // Our own frames are not read back, even one addressed to us.
    let to_self = udp4_frame(
        peer_mac,
        guest_mac,
        (PEER4, 4000),
        (US4, PORT).into(),
        b"sent by us",
    );
    assert!(link
        .send(to_self.len(), &mut |buf| buf.copy_from_slice(&to_self))
        .unwrap());
    let seen = send_until(
        &mut link,
        "marker after our own frame",
        || drop(peer4.send_to(b"marker 2", (US4, PORT))),
        |f| udp4_payload(f) == Some(b"marker 2"),
    );
    assert!(seen.iter().all(|f| udp4_payload(f) != Some(b"sent by us")));

    // set_addresses: .20 no longer comes up, .30 does.
    link.set_addresses(&[IpAddr::V4(MOVED4), IpAddr::V6(US6)])
        .unwrap();
    lab.peer_neighbour(MOVED4.into(), guest_mac);
    for _ in 0..3 {
        peer4.send_to(b"old address", (US4, PORT)).unwrap();
    }
    let seen = send_until(
        &mut link,
        "UDP to the new address 10.213.0.30",
        || drop(peer4.send_to(b"new address", (MOVED4, PORT))),
        |f| ipv4_dst(f) == Some(MOVED4) && udp4_payload(f) == Some(b"new address"),
    );
    assert!(seen.iter().all(|f| ipv4_dst(f) != Some(US4)));

    // A large address set is a program the kernel takes (long forward
    // jumps); one too large is refused before it reaches the kernel.
    let many: Vec<IpAddr> = (0..900u32)
        .map(|i| IpAddr::V4(Ipv4Addr::from(0x0a0a_0000 + i)))
        .chain([IpAddr::V4(MOVED4), IpAddr::V6(US6)])
        .collect();
    link.set_addresses(&many).expect("900 addresses");
    send_until(
        &mut link,
        "UDP to 10.213.0.30 under a 900-address filter",
        || drop(peer4.send_to(b"many", (MOVED4, PORT))),
        |f| udp4_payload(f) == Some(b"many"),
    );
    let too_many: Vec<IpAddr> = (0..2000u32)
        .map(|i| IpAddr::V4(Ipv4Addr::from(0x0a0a_0000 + i)))
        .collect();
    match link.set_addresses(&too_many) {
        Err(e @ LinkError::FilterTooLong { .. }) => println!("refused as expected: {e}"),
        other => panic!("2000 addresses: {other:?}"),
    }

    // An 802.1Q-tagged frame to a stack address belongs to a VLAN device,
    // not to the untagged stack. The kernel moves the tag into metadata
    // before taps run, so only the filter's VLAN check keeps it out.
    let mut wire = lab
        .in_ns(&lab.peer, || PacketLink::open("vp0", &[]))
        .expect("peer packet link");
    let plain = udp4_frame(
        guest_mac,
        peer_mac,
        (PEER4, 4000),
        (MOVED4, PORT).into(),
        b"tagged",
    );
    let mut tagged = plain[..12].to_vec();
    tagged.extend([0x81, 0x00, 0x00, 0x05]);
    tagged.extend(&plain[12..]);
    assert!(wire
        .send(tagged.len(), &mut |buf| buf.copy_from_slice(&tagged))
        .unwrap());
    let seen = send_until(
        &mut link,
        "marker after a VLAN-tagged frame",
        || drop(peer4.send_to(b"marker 3", (MOVED4, PORT))),
        |f| udp4_payload(f) == Some(b"marker 3"),
    );
    assert!(seen.iter().all(|f| udp4_payload(f) != Some(b"tagged")));

    // The device goes down and comes back: Down, then Up again from use.
    run("ip", &["-n", &lab.guest, "link", "set", "vg0", "down"]);
    let down_err = link
        .send(frame.len(), &mut |buf| buf.copy_from_slice(&frame))
        .expect_err("send on a down device");
    println!("send while down: {down_err}");
    assert!(matches!(down_err, LinkError::Down(_)));
    assert_eq!(link.health(), Health::Down);
    run("ip", &["-n", &lab.guest, "link", "set", "vg0", "up"]);
    send_until(
        &mut link,
        "UDP to 10.213.0.30 after down/up",
        || drop(peer4.send_to(b"back up", (MOVED4, PORT))),
        |f| udp4_payload(f) == Some(b"back up"),
    );
    assert_eq!(link.health(), Health::Up);

    // With checksum offload back on at the peer, its frames carry only a
    // partial checksum on the wire; the link completes it.
    run(
        "ip",
        &[
            "netns", "exec", &lab.peer, "ethtool", "-K", "vp0", "tx", "on",
        ],
    );
    let seen = send_until(
        &mut link,
        "UDP with an offloaded checksum",
        || drop(peer4.send_to(b"offloaded", (MOVED4, PORT))),
        |f| udp4_payload(f) == Some(b"offloaded"),
    );
    let f = seen.last().unwrap();
    assert!(udp4_checksum_ok(f), "bad checksum: {}", describe(f));

    // The device goes away: errors, not panics, and the health says so.
    run("ip", &["-n", &lab.guest, "link", "del", "vg0"]);
    let deadline = Instant::now() + Duration::from_secs(2);
    let recv_err = loop {
        match link.recv(64, &mut |_| {}) {
            Err(e) => break e,
            Ok(_) if Instant::now() < deadline => thread::sleep(Duration::from_millis(10)),
            Ok(n) => panic!("recv still Ok({n}) 2 s after the device was deleted"),
        }
    };
    println!("recv after delete: {recv_err}");
    assert!(matches!(recv_err, LinkError::Gone(_) | LinkError::Down(_)));
    let send_err = link
        .send(frame.len(), &mut |buf| buf.copy_from_slice(&frame))
        .expect_err("send on a deleted device");
    println!("send after delete: {send_err}");
    assert!(matches!(send_err, LinkError::Gone(_) | LinkError::Down(_)));
    assert_ne!(link.health(), Health::Up);
    println!("health after delete: {:?}", link.health());
}
