//! XdpLink against the kernel: two network namespaces joined by a veth pair
//! (created inside them, never in the root namespace), the link on the
//! "guest" end, traffic from the "peer" end.
//!
//! Needs root; without it the test prints a skip message and passes, except
//! under `CI=true`, where it fails so CI cannot silently skip it.

use std::fs::File;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::os::fd::BorrowedFd;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sched::{setns, CloneFlags};
use vfailover_netstack::link::xdp::{XdpConfig, XdpLink, XdpModeRequest};
use vfailover_netstack::link::{Health, Link, LinkError, LinkMode};
use vfailover_netstack::mac::MacAddr;
use vfailover_netstack::xdp::attached_program;

const GUEST_IF: &str = "veth0";
const PEER_IF: &str = "veth1";
const GUEST_MAC: MacAddr = MacAddr([0x02, 0x00, 0x00, 0x21, 0x30, 0x10]);
const PEER_MAC: MacAddr = MacAddr([0x02, 0x00, 0x00, 0x21, 0x30, 0x01]);
const STACK_V4: Ipv4Addr = Ipv4Addr::new(10, 213, 0, 20);
const KERNEL_V4: Ipv4Addr = Ipv4Addr::new(10, 213, 0, 10);
const PEER_V4: Ipv4Addr = Ipv4Addr::new(10, 213, 0, 1);
const STACK_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x213, 0, 0, 0, 0, 0, 0x20);
const STACK_PORT: u16 = 7777;
const KERNEL_PORT: u16 = 7778;
const ECHO_ID: u16 = 0x7f0a;

/// Run a command given as one whitespace-separated string.
fn cmd(line: &str) -> String {
    run(&line.split_whitespace().collect::<Vec<_>>())
}

fn run(args: &[&str]) -> String {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("cannot run {args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Two namespaces with run-unique names, deleted on drop (also on panic),
/// which deletes the veth pair with them.
struct Lab {
    guest: String,
    peer: String,
}

impl Lab {
    fn new() -> Lab {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let tag = format!("{}-{:08x}", std::process::id(), nanos);
        let lab = Lab {
            guest: format!("vfo-xdp-guest-{tag}"),
            peer: format!("vfo-xdp-peer-{tag}"),
        };
        run(&["ip", "netns", "add", &lab.guest]);
        run(&["ip", "netns", "add", &lab.peer]);
        create_veth(&lab.guest, &lab.peer);
        lab
    }
}

/// The veth pair between namespaces `g` and `p`, made inside them, two
/// queues each side so the one-XSK-per-queue path is exercised, with fixed
/// MACs and the addresses of both kernels.
fn create_veth(g: &str, p: &str) {
    let queues = "numtxqueues 2 numrxqueues 2";
    cmd(&format!(
        "ip -n {g} link add name {GUEST_IF} address {GUEST_MAC} {queues} \
         type veth peer name {PEER_IF} netns {p} address {PEER_MAC} {queues}"
    ));
    cmd(&format!("ip -n {g} addr add 10.213.0.10/24 dev {GUEST_IF}"));
    cmd(&format!(
        "ip -n {g} addr add fd00:213::10/64 dev {GUEST_IF} nodad"
    ));
    cmd(&format!("ip -n {p} addr add 10.213.0.1/24 dev {PEER_IF}"));
    cmd(&format!(
        "ip -n {p} addr add fd00:213::1/64 dev {PEER_IF} nodad"
    ));
    // The peer's kernel would otherwise hand veth TSO/GSO super-frames
    // (bigger than a UMEM frame, so the XSK drops them) and leave checksums
    // for "hardware" to fill in (CHECKSUM_PARTIAL), which an XSK sees as
    // wrong. With the offloads off, frames look as they would on a wire.
    cmd(&format!(
        "ip netns exec {p} ethtool -K {PEER_IF} tso off gso off tx off"
    ));
    cmd(&format!("ip -n {g} link set {GUEST_IF} up"));
    cmd(&format!("ip -n {p} link set {PEER_IF} up"));
}

impl Drop for Lab {
    fn drop(&mut self) {
        for ns in [&self.guest, &self.peer] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

/// Move the calling thread into network namespace `name`.
fn enter(name: &str) {
    let ns = File::open(format!("/run/netns/{name}")).expect("open netns");
    setns(&ns, CloneFlags::CLONE_NEWNET).expect("setns");
}

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

#[test]
fn xdp_link_in_namespaces() {
    if !is_root() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "xdp_link needs root, and CI=true forbids skipping it"
        );
        eprintln!("SKIP xdp_link: needs root (CAP_NET_ADMIN and CAP_BPF)");
        return;
    }
    let lab = Lab::new();
    // The whole scenario runs in a thread inside the guest namespace: the
    // link is opened where its device lives, as the agent would be.
    let (guest, peer) = (lab.guest.clone(), lab.peer.clone());
    let result = thread::spawn(move || {
        enter(&guest);
        scenario(&guest, &peer);
    })
    .join();
    drop(lab);
    if let Err(panic) = result {
        std::panic::resume_unwind(panic);
    }
}

fn config() -> XdpConfig {
    XdpConfig {
        ifname: GUEST_IF.into(),
        addresses: vec![IpAddr::V4(STACK_V4), IpAddr::V6(STACK_V6)],
        frame_count: 512,
        rx_ring: 256,
        tx_ring: 256,
        fill_ring: 256,
        comp_ring: 256,
        bind_timeout: Duration::from_secs(3),
        ..XdpConfig::default()
    }
}

fn scenario(guest: &str, peer: &str) {
    let mut link = XdpLink::open(&config()).expect("open XdpLink");
    println!(
        "xdp_link: {} ifindex {} mode {} queues {} max frame {}",
        link.ifname(),
        link.ifindex(),
        link.mode(),
        link.fds().len(),
        link.max_frame_len()
    );
    assert!(matches!(
        link.mode(),
        LinkMode::XdpZeroCopy | LinkMode::XdpDriver | LinkMode::XdpGeneric
    ));
    assert_eq!(link.fds().len(), 2, "one XSK per RX queue");
    assert_eq!(link.health(), Health::Up);

    stack_traffic(&mut link, peer);
    kernel_still_answers(peer);

    // Another program on the device (here: the first link's) is never
    // replaced: a second open fails and the first keeps its program.
    let before = attached_program(link.ifindex()).expect("query XDP");
    match XdpLink::open(&config()) {
        Err(e @ LinkError::ForeignProgram { .. })
            if e.to_string().contains("already has XDP program") =>
        {
            println!("xdp_link: second open refused: {e}")
        }
        other => panic!("second open on a device with a program: {other:?}"),
    }
    assert_eq!(attached_program(link.ifindex()).expect("query XDP"), before);

    // (5) Dropping the link detaches the program.
    let ifindex = link.ifindex();
    drop(link);
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let shown = run(&["ip", "-n", guest, "link", "show", GUEST_IF]);
        let xdp_shown = shown
            .split_whitespace()
            .any(|w| w.starts_with("xdp") || w.starts_with("prog/xdp"));
        if !xdp_shown && attached_program(ifindex).expect("query XDP").is_none() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "(5) XDP program still attached after drop: {shown}"
        );
        thread::sleep(Duration::from_millis(20));
    }
    println!("xdp_link: no XDP program left on {GUEST_IF} after drop");

    // Generic (SKB) mode on request, the fallback for devices without
    // native XDP.
    let generic = XdpConfig {
        mode: XdpModeRequest::Generic,
        ..config()
    };
    let mut link = XdpLink::open(&generic).expect("open in generic mode");
    assert_eq!(link.mode(), LinkMode::XdpGeneric);
    assert!(receives(&mut link, peer), "generic mode receives");
    println!("xdp_link: generic mode works too");
    drop(link);

    // (6) The device vanishes under an open link.
    let mut link = XdpLink::open(&config()).expect("reopen XdpLink");
    run(&["ip", "-n", guest, "link", "del", GUEST_IF]);
    device_gone(&mut link);
    drop(link);

    // (7) A new device of the same name: open again, through the EBUSY
    // retry path (a socket of our own holds queue 0 for a while).
    create_veth(guest, peer);
    reopen_after_busy(peer);
}

/// Wait until one of the link's fds is readable or `ms` pass.
fn wait_readable(link: &XdpLink, ms: u16) -> bool {
    let fds = link.fds();
    let mut pollfds: Vec<PollFd> = fds
        .iter()
        // SAFETY: the fds belong to `link`, which outlives this call.
        .map(|&fd| PollFd::new(unsafe { BorrowedFd::borrow_raw(fd) }, PollFlags::POLLIN))
        .collect();
    poll(&mut pollfds, PollTimeout::from(ms)).unwrap_or(0) > 0
}

fn recv_all(link: &mut XdpLink) -> Vec<Vec<u8>> {
    let mut frames = Vec::new();
    link.recv(64, &mut |f| frames.push(f.to_vec()))
        .expect("recv");
    frames
}

fn send_frame(link: &mut XdpLink, frame: &[u8]) {
    let queued = link
        .send(frame.len(), &mut |buf| buf.copy_from_slice(frame))
        .expect("send");
    assert!(queued, "TX ring full");
    link.flush().expect("flush");
}

/// Send UDP datagrams from the peer namespace until `stop`, at most
/// `count`, one every 100 ms.
fn peer_sender(peer: &str, to: SocketAddr, count: u32, stop: &AtomicBool) {
    enter(peer);
    let bind: SocketAddr = if to.is_ipv4() {
        "0.0.0.0:0".parse().unwrap()
    } else {
        "[::]:0".parse().unwrap()
    };
    let sock = UdpSocket::bind(bind).expect("peer UDP socket");
    for i in 0..count {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        // Errors are expected until the neighbour resolves (EHOSTUNREACH).
        let _ = sock.send_to(format!("xdp-hello-{i}").as_bytes(), to);
        thread::sleep(Duration::from_millis(100));
    }
}

/// What `stack_traffic` has seen.
#[derive(Debug, Default)]
struct Seen {
    arp: bool,
    ns: bool,
    udp4: bool,
    udp6: bool,
    echo_reply: bool,
    readable: bool,
}

impl Seen {
    fn all(&self) -> bool {
        self.arp && self.ns && self.udp4 && self.udp6 && self.echo_reply
    }
}

/// (1) UDP to the stack addresses arrives; (2) frames we send arrive: our
/// ARP reply and neighbour advertisement are what let the peer send its UDP
/// at all, and the peer answers the echo request we send; (4) ARP and IPv6
/// NS for the stack addresses reach the XSK.
fn stack_traffic(link: &mut XdpLink, peer: &str) {
    let stop = AtomicBool::new(false);
    let mut seen = Seen::default();
    let mut echo_sent = false;
    thread::scope(|s| {
        s.spawn(|| peer_sender(peer, SocketAddr::from((STACK_V4, STACK_PORT)), 80, &stop));
        s.spawn(|| peer_sender(peer, SocketAddr::from((STACK_V6, STACK_PORT)), 80, &stop));
        let deadline = Instant::now() + Duration::from_secs(8);
        while Instant::now() < deadline && !seen.all() {
            seen.readable |= wait_readable(link, 50);
            for frame in recv_all(link) {
                if let Some(sender) = arp_request_for(&frame, STACK_V4) {
                    seen.arp = true;
                    send_frame(link, &arp_reply(sender));
                } else if ns_for(&frame, &STACK_V6) {
                    seen.ns = true;
                    send_frame(link, &neighbour_advert(&frame));
                } else if udp_to(&frame, IpAddr::V4(STACK_V4), STACK_PORT) {
                    seen.udp4 = true;
                } else if udp_to(&frame, IpAddr::V6(STACK_V6), STACK_PORT) {
                    seen.udp6 = true;
                } else if echo_reply(&frame) {
                    seen.echo_reply = true;
                }
            }
            if seen.arp && !echo_sent {
                send_frame(link, &echo_request());
                echo_sent = true;
            }
        }
        stop.store(true, Ordering::Relaxed);
    });
    println!("xdp_link: {seen:?}");
    assert!(
        seen.arp,
        "(4) ARP request for the stack address reached the XSK"
    );
    assert!(seen.ns, "(4) IPv6 NS for the stack address reached the XSK");
    assert!(seen.udp4, "(1) UDP to the stack's IPv4 address arrived");
    assert!(seen.udp6, "(1) UDP to the stack's IPv6 address arrived");
    assert!(seen.echo_reply, "(2) the peer answered our echo request");
    assert!(seen.readable, "an XSK fd became readable");
}

/// (3) The guest kernel's own address still works with the program attached.
fn kernel_still_answers(peer: &str) {
    let sock = UdpSocket::bind((KERNEL_V4, KERNEL_PORT)).expect("guest kernel UDP socket");
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let stop = AtomicBool::new(false);
    let mut got = false;
    thread::scope(|s| {
        s.spawn(|| peer_sender(peer, SocketAddr::from((KERNEL_V4, KERNEL_PORT)), 30, &stop));
        let deadline = Instant::now() + Duration::from_secs(4);
        let mut buf = [0u8; 64];
        while !got && Instant::now() < deadline {
            got = sock.recv_from(&mut buf).is_ok();
        }
        stop.store(true, Ordering::Relaxed);
    });
    assert!(got, "(3) the guest kernel received UDP for its own address");
    let ping = Command::new("ip")
        .args([
            "netns", "exec", peer, "ping", "-c", "3", "-i", "0.2", "-W", "2",
        ])
        .arg(KERNEL_V4.to_string())
        .output();
    match ping {
        Ok(out) if out.status.success() => {
            println!("xdp_link: guest kernel answers ping and UDP while attached")
        }
        Ok(out) if String::from_utf8_lossy(&out.stderr).contains("No such file") => {
            println!("xdp_link: no ping binary; guest kernel checked with UDP only")
        }
        Ok(out) => panic!(
            "(3) ping to the guest kernel failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
        Err(e) => panic!("cannot run ip netns exec: {e}"),
    }
}

/// (6) After the device is deleted, use fails with Gone/Down, no panic.
fn device_gone(link: &mut XdpLink) {
    let frame = echo_request();
    let mut first_error = None;
    for _ in 0..10 {
        let sent = link.send(frame.len(), &mut |buf| buf.copy_from_slice(&frame));
        let result = sent.and_then(|_| link.flush());
        if let Err(e) = result {
            first_error = Some(e);
            break;
        }
        thread::sleep(Duration::from_millis(20));
    }
    let how = match first_error {
        Some(e) => {
            assert!(
                matches!(e, LinkError::Gone(_) | LinkError::Down(_)),
                "(6) unexpected error after delete: {e}"
            );
            format!("send/flush returned `{e}`")
        }
        None => {
            // What the owner does on RTM_DELLINK.
            link.set_health(Health::Gone);
            "no error from use; health set by owner".to_owned()
        }
    };
    assert_ne!(link.health(), Health::Up, "(6) health reflects the loss");
    let recv = link.recv(64, &mut |_| {});
    assert!(
        matches!(recv, Err(LinkError::Gone(_)) | Err(LinkError::Down(_))),
        "(6) recv after delete: {recv:?}"
    );
    println!(
        "xdp_link: device deleted: {how}; health {:?}",
        link.health()
    );
}

/// (7) Open on the re-created device while another socket holds queue 0:
/// a short bind timeout reports busy, a longer one waits it out.
fn reopen_after_busy(peer: &str) {
    let holder = hold_queue0();
    let short = XdpConfig {
        bind_timeout: Duration::from_millis(100),
        ..config()
    };
    let err = XdpLink::open(&short).expect_err("queue 0 is held");
    println!("xdp_link: open while queue 0 is held: {err}");
    assert!(err.to_string().contains("busy"), "busy error: {err}");

    let release = thread::spawn(move || {
        thread::sleep(Duration::from_millis(300));
        drop(holder);
    });
    let started = Instant::now();
    let mut link = XdpLink::open(&config()).expect("open after the holder lets go");
    let waited = started.elapsed();
    release.join().unwrap();
    println!(
        "xdp_link: reopened on the new {GUEST_IF} after {waited:?} (mode {})",
        link.mode()
    );
    assert!(waited >= Duration::from_millis(250), "bind was retried");

    assert!(receives(&mut link, peer), "(7) the reopened link receives");
}

/// Whether UDP from the peer to the stack address, or the ARP request it
/// provokes when the peer has no neighbour entry, reaches the link within a
/// few seconds.
fn receives(link: &mut XdpLink, peer: &str) -> bool {
    let stop = AtomicBool::new(false);
    let mut seen = false;
    thread::scope(|s| {
        s.spawn(|| peer_sender(peer, SocketAddr::from((STACK_V4, STACK_PORT)), 40, &stop));
        let deadline = Instant::now() + Duration::from_secs(4);
        while !seen && Instant::now() < deadline {
            wait_readable(link, 50);
            seen = recv_all(link).iter().any(|f| {
                arp_request_for(f, STACK_V4).is_some()
                    || udp_to(f, IpAddr::V4(STACK_V4), STACK_PORT)
            });
        }
        stop.store(true, Ordering::Relaxed);
    });
    seen
}

/// An AF_XDP socket of our own on queue 0 of the guest veth, bound without
/// any program (so nothing is attached), to make `bind` return EBUSY.
fn hold_queue0() -> impl Send {
    use xsk_rs::config::{BindFlags, LibxdpFlags, SocketConfig, UmemConfig};
    let (umem, _frames) = xsk_rs::Umem::new(UmemConfig::default(), 64.try_into().unwrap(), false)
        .expect("holder UMEM");
    let cfg = SocketConfig::builder()
        .libxdp_flags(LibxdpFlags::XSK_LIBXDP_FLAGS_INHIBIT_PROG_LOAD)
        .bind_flags(BindFlags::XDP_COPY)
        .build();
    // SAFETY: a fresh UMEM bound once, with INHIBIT_PROG_LOAD.
    let sockets = unsafe { xsk_rs::Socket::new(cfg, &umem, &GUEST_IF.parse().unwrap(), 0) }
        .expect("holder socket");
    (umem, sockets)
}

// ---- frames -----------------------------------------------------------

fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = data
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn ethertype(frame: &[u8]) -> Option<u16> {
    frame.get(12..14).map(|b| u16::from_be_bytes([b[0], b[1]]))
}

/// The sender (MAC, IPv4) of an ARP request whose target is `target`.
fn arp_request_for(frame: &[u8], target: Ipv4Addr) -> Option<([u8; 6], [u8; 4])> {
    if ethertype(frame)? != 0x0806 || frame.len() < 42 {
        return None;
    }
    let arp = &frame[14..42];
    let is_request = arp[6..8] == [0, 1];
    if !is_request || arp[24..28] != target.octets() {
        return None;
    }
    Some((arp[8..14].try_into().ok()?, arp[14..18].try_into().ok()?))
}

fn arp_reply((mac, ip): ([u8; 6], [u8; 4])) -> Vec<u8> {
    let mut f = Vec::with_capacity(42);
    f.extend_from_slice(&mac);
    f.extend_from_slice(&GUEST_MAC.0);
    f.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0x00, 6, 4, 0, 2]);
    f.extend_from_slice(&GUEST_MAC.0);
    f.extend_from_slice(&STACK_V4.octets());
    f.extend_from_slice(&mac);
    f.extend_from_slice(&ip);
    f
}

/// An ICMPv6 neighbour solicitation whose target is `target`.
fn ns_for(frame: &[u8], target: &Ipv6Addr) -> bool {
    ethertype(frame) == Some(0x86dd)
        && frame.len() >= 78
        && frame[20] == 58
        && frame[54] == 135
        && frame[62..78] == target.octets()
}

/// UDP from `peer_sender` to `dst`:`port`.
fn udp_to(frame: &[u8], dst: IpAddr, port: u16) -> bool {
    let udp = match (ethertype(frame), dst) {
        (Some(0x0800), IpAddr::V4(a)) if frame.len() >= 34 => {
            if frame[23] != 17 || frame[30..34] != a.octets() {
                return false;
            }
            34 // no IPv4 options from the peer's stack
        }
        (Some(0x86dd), IpAddr::V6(a)) if frame.len() >= 54 => {
            if frame[20] != 17 || frame[38..54] != a.octets() {
                return false;
            }
            54
        }
        _ => return false,
    };
    frame.len() >= udp + 8
        && frame[udp + 2..udp + 4] == port.to_be_bytes()
        && frame[udp + 8..].starts_with(b"xdp-hello-")
}

/// A solicited neighbour advertisement for `STACK_V6` answering `ns`.
fn neighbour_advert(ns: &[u8]) -> Vec<u8> {
    let (peer_mac, peer_ip) = (&ns[6..12], &ns[22..38]);
    let mut icmp = vec![136, 0, 0, 0, 0x60, 0, 0, 0]; // solicited + override
    icmp.extend_from_slice(&STACK_V6.octets());
    icmp.extend_from_slice(&[2, 1]); // target link-layer address option
    icmp.extend_from_slice(&GUEST_MAC.0);
    // The ICMPv6 checksum covers a pseudo-header (RFC 8200 8.1).
    let mut pseudo = Vec::with_capacity(40 + icmp.len());
    pseudo.extend_from_slice(&STACK_V6.octets());
    pseudo.extend_from_slice(peer_ip);
    pseudo.extend_from_slice(&(icmp.len() as u32).to_be_bytes());
    pseudo.extend_from_slice(&[0, 0, 0, 58]);
    pseudo.extend_from_slice(&icmp);
    let sum = checksum(&pseudo);
    icmp[2..4].copy_from_slice(&sum.to_be_bytes());

    let mut f = Vec::with_capacity(54 + icmp.len());
    f.extend_from_slice(peer_mac);
    f.extend_from_slice(&GUEST_MAC.0);
    f.extend_from_slice(&[0x86, 0xdd, 0x60, 0, 0, 0]);
    f.extend_from_slice(&(icmp.len() as u16).to_be_bytes());
    f.extend_from_slice(&[58, 255]);
    f.extend_from_slice(&STACK_V6.octets());
    f.extend_from_slice(peer_ip);
    f.extend_from_slice(&icmp);
    f
}

fn echo_request() -> Vec<u8> {
    let mut f = Vec::with_capacity(50);
    f.extend_from_slice(&PEER_MAC.0);
    f.extend_from_slice(&GUEST_MAC.0);
    f.extend_from_slice(&[0x08, 0x00]);
    let mut ip = [0u8; 20];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&36u16.to_be_bytes());
    ip[8] = 64;
    ip[9] = 1;
    ip[12..16].copy_from_slice(&STACK_V4.octets());
    ip[16..20].copy_from_slice(&PEER_V4.octets());
    let sum = checksum(&ip);
    ip[10..12].copy_from_slice(&sum.to_be_bytes());
    f.extend_from_slice(&ip);
    let mut icmp = [0u8; 16];
    icmp[0] = 8;
    icmp[4..6].copy_from_slice(&ECHO_ID.to_be_bytes());
    icmp[6..8].copy_from_slice(&1u16.to_be_bytes());
    icmp[8..16].copy_from_slice(b"vfo-xdp!");
    let sum = checksum(&icmp);
    icmp[2..4].copy_from_slice(&sum.to_be_bytes());
    f.extend_from_slice(&icmp);
    f
}

fn echo_reply(frame: &[u8]) -> bool {
    ethertype(frame) == Some(0x0800)
        && frame.len() >= 42
        && frame[23] == 1
        && frame[26..30] == PEER_V4.octets()
        && frame[30..34] == STACK_V4.octets()
        && frame[34] == 0
        && frame[38..40] == ECHO_ID.to_be_bytes()
}
