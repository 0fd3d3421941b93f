//! The failover datapath over in-memory links: no root, no kernel.
//!
//! A test "switch" floods the peer's frames to both of the stack's links and
//! forwards what the stack sends back to the peer, who is itself a smoltcp
//! stack. That is enough to check path choice, attach/detach, counters,
//! malformed frames and a TCP stream surviving unplug and replug.

use smoltcp::iface::SocketHandle;
use smoltcp::socket::tcp;
use smoltcp::time::Instant;
use smoltcp::wire::{IpAddress, IpCidr};
use vfailover_netstack::link::memory::MemoryLink;
use vfailover_netstack::link::{Health, Link};
use vfailover_netstack::mac::MacAddr;
use vfailover_netstack::resend::ResendLimits;
use vfailover_netstack::stack::{Buffers, ServiceConfig, ServiceKind, Stack, StackConfig};
use vfailover_netstack::stats::{Path, SwitchCause};

const STACK_MAC: MacAddr = MacAddr([0x02, 0, 0, 0, 0, 0x20]);
const PEER_MAC: MacAddr = MacAddr([0x02, 0, 0, 0, 0, 0x01]);

fn config(mac: MacAddr, cidr: &str, services: Vec<ServiceConfig>) -> StackConfig {
    StackConfig {
        mac,
        addresses: vec![cidr.parse().unwrap()],
        gateway_v4: None,
        gateway_v6: None,
        services,
        mtu: 1500,
        buffers: Buffers::default(),
        resend: ResendLimits::default(),
        tcp_sack: true,
    }
}

/// Switch-side ends of the three wires.
struct Switch {
    to_primary: Option<MemoryLink>,
    to_standby: MemoryLink,
    to_peer: MemoryLink,
}

impl Switch {
    fn forward(&mut self) {
        let mut frames = Vec::new();
        self.to_peer
            .recv(usize::MAX, &mut |f| frames.push(f.to_vec()))
            .unwrap();
        for frame in &frames {
            if let Some(primary) = self.to_primary.as_mut() {
                primary
                    .send(frame.len(), &mut |b| b.copy_from_slice(frame))
                    .unwrap();
            }
            self.to_standby
                .send(frame.len(), &mut |b| b.copy_from_slice(frame))
                .unwrap();
        }
        let mut back = Vec::new();
        if let Some(primary) = self.to_primary.as_mut() {
            primary
                .recv(usize::MAX, &mut |f| back.push(f.to_vec()))
                .unwrap();
        }
        self.to_standby
            .recv(usize::MAX, &mut |f| back.push(f.to_vec()))
            .unwrap();
        for frame in &back {
            self.to_peer
                .send(frame.len(), &mut |b| b.copy_from_slice(frame))
                .unwrap();
        }
    }
}

struct Lab {
    stack: Stack,
    peer: Stack,
    switch: Switch,
    now: Instant,
}

impl Lab {
    fn new() -> Lab {
        Lab::with_resend(ResendLimits::default())
    }

    fn with_resend(resend: ResendLimits) -> Lab {
        let (standby, to_standby) = MemoryLink::pair("virtio0", "sw-standby");
        let (primary, to_primary) = MemoryLink::pair("vf0", "sw-primary");
        let (peer_link, to_peer) = MemoryLink::pair("peer0", "sw-peer");
        let services = vec![
            ServiceConfig {
                kind: ServiceKind::TcpEcho,
                port: 7,
            },
            ServiceConfig {
                kind: ServiceKind::UdpEcho,
                port: 7,
            },
        ];
        let stack = Stack::new(
            &StackConfig {
                resend,
                ..config(STACK_MAC, "10.0.0.20/24", services)
            },
            Some(Box::new(standby)),
            Some(Box::new(primary)),
        )
        .unwrap();
        let peer = Stack::new(
            &config(PEER_MAC, "10.0.0.1/24", vec![]),
            Some(Box::new(peer_link)),
            None,
        )
        .unwrap();
        Lab {
            stack,
            peer,
            switch: Switch {
                to_primary: Some(to_primary),
                to_standby,
                to_peer,
            },
            now: Instant::from_millis(0),
        }
    }

    fn step(&mut self) {
        self.now += smoltcp::time::Duration::from_millis(1);
        self.peer.poll(self.now);
        self.switch.forward();
        self.stack.poll(self.now);
        self.switch.forward();
    }

    /// A step in which the primary vanishes right after the stack sent on
    /// it: what it sent in this step never reaches the switch.
    fn step_and_unplug(&mut self) {
        self.now += smoltcp::time::Duration::from_millis(1);
        self.peer.poll(self.now);
        self.switch.forward();
        self.stack.poll(self.now);
        self.unplug();
        self.switch.forward();
    }

    fn unplug(&mut self) {
        self.switch.to_primary = None;
        let ifindex = self.stack.device().primary().unwrap().ifindex();
        self.stack
            .device_mut()
            .set_link_health(ifindex, Health::Gone);
    }

    fn replug(&mut self) {
        let (primary, to_primary) = MemoryLink::pair("vf0", "sw-primary");
        self.switch.to_primary = Some(to_primary);
        self.stack
            .device_mut()
            .attach_primary(Box::new(primary))
            .unwrap();
    }
}

fn pattern(offset: usize, len: usize) -> Vec<u8> {
    (offset..offset + len).map(|i| (i % 251) as u8).collect()
}

/// Push `total` bytes through the echo service, calling `at(sent)` hooks,
/// and check that every echoed byte matches. Returns the longest time, in
/// the lab's clock, between two reads that returned echoed bytes.
fn echo_transfer(
    lab: &mut Lab,
    total: usize,
    mut event: impl FnMut(&mut Lab, usize),
) -> smoltcp::time::Duration {
    let handle: SocketHandle = lab.peer.add_tcp_socket();
    let (sockets, iface) = lab.peer.sockets_and_iface();
    sockets
        .get_mut::<tcp::Socket>(handle)
        .connect(iface.context(), (IpAddress::v4(10, 0, 0, 20), 7), 40000)
        .unwrap();
    let (mut sent, mut received) = (0usize, 0usize);
    let mut buf = vec![0u8; 8192];
    let mut last_echo = lab.now;
    let mut longest = smoltcp::time::Duration::ZERO;
    for _ in 0..200_000 {
        lab.step();
        let socket = lab.peer.sockets_mut().get_mut::<tcp::Socket>(handle);
        assert!(
            !matches!(socket.state(), tcp::State::Closed | tcp::State::TimeWait),
            "connection reset at {sent} bytes sent"
        );
        if socket.can_send() && sent < total {
            let chunk = pattern(sent, (total - sent).min(4096));
            sent += socket.send_slice(&chunk).unwrap();
        }
        while socket.can_recv() {
            let n = socket.recv_slice(&mut buf).unwrap();
            assert_eq!(
                buf[..n],
                pattern(received, n)[..],
                "echo differs at {received}"
            );
            received += n;
            if n > 0 {
                longest = longest.max(lab.now - last_echo);
                last_echo = lab.now;
            }
        }
        event(lab, sent);
        if received == total {
            return longest;
        }
    }
    panic!("transfer stalled: sent {sent}, received {received} of {total}");
}

#[test]
fn tx_follows_primary_and_rx_takes_both() {
    let mut lab = Lab::new();
    assert_eq!(lab.stack.device().path(), Path::Primary);
    echo_transfer(&mut lab, 64 * 1024, |_, _| {});
    let stats = lab.stack.device().stats();
    assert!(stats.primary.tx_packets > 0);
    assert_eq!(
        stats.standby.tx_packets, 0,
        "no TX on the standby while the primary is up"
    );
    // The switch floods to both links, so both received.
    assert!(stats.primary.rx_packets > 0 && stats.standby.rx_packets > 0);
}

#[test]
fn tcp_survives_unplug_and_replug() {
    let mut lab = Lab::new();
    let total = 2 * 1024 * 1024;
    let mut phase = 0;
    echo_transfer(&mut lab, total, |lab, sent| {
        if phase == 0 && sent > total / 3 {
            lab.unplug();
            phase = 1;
        } else if phase == 1 && sent > 2 * total / 3 {
            lab.replug();
            phase = 2;
        }
    });
    assert_eq!(phase, 2);
    let stats = lab.stack.device().stats();
    assert_eq!(stats.switches, 2, "primary -> standby -> primary");
    assert!(
        stats.standby.tx_packets > 0,
        "standby carried traffic while unplugged"
    );
    let last = stats.last_switch.unwrap();
    assert_eq!((last.from, last.to), (Path::Standby, Path::Primary));
    assert_eq!(last.cause, SwitchCause::PrimaryAttached);
    assert!(last.first_tx_after.is_some());
    assert_eq!(lab.stack.device().path(), Path::Primary);
}

/// Frames on the vanished primary's ring are lost. With the resender the
/// stack sends them again on the standby at once; without it smoltcp waits
/// for its retransmission timer, at least 1 s, as nothing follows the tail
/// of the echo that would bring duplicate ACKs.
#[test]
fn segments_lost_with_the_primary_are_resent_at_once() {
    let stall = |resend: ResendLimits| {
        let mut lab = Lab::with_resend(resend);
        let total = 512 * 1024;
        let mut unplugged = false;
        let longest = echo_transfer(&mut lab, total, |lab, sent| {
            if !unplugged && sent == total {
                lab.step_and_unplug();
                unplugged = true;
            }
        });
        assert!(unplugged);
        (longest, lab.stack.device().stats().resend)
    };
    let (with, counters) = stall(ResendLimits::default());
    let (without, _) = stall(ResendLimits {
        enabled: false,
        ..ResendLimits::default()
    });
    assert!(
        with.total_millis() <= 20,
        "longest echo stall with the resender: {with}"
    );
    assert!(
        without.total_millis() >= 900,
        "without the resender smoltcp's minimum RTO shows: {without}"
    );
    assert!(
        counters.rounds >= 1 && counters.segments > 0 && counters.acks > 0,
        "{counters:?}"
    );
}

/// Re-resolving neighbours mid-stream (as after a migration) asks the TCP
/// peer for its address again and does not stall the stream: the entry in
/// use stays until the answer comes.
#[test]
fn refreshing_neighbours_does_not_stall_tcp() {
    let mut lab = Lab::new();
    let total = 512 * 1024;
    let mut asked = None;
    let longest = echo_transfer(&mut lab, total, |lab, sent| {
        if asked.is_none() && sent > total / 2 {
            asked = Some(lab.stack.refresh_neighbors());
        }
    });
    assert_eq!(asked, Some(1), "one ARP request, for the TCP peer");
    assert!(
        longest.total_millis() <= 20,
        "longest echo stall: {longest}"
    );
}

/// A primary in its hold receives but does not send; released, it sends;
/// a held primary whose device goes away is dropped, not switched to.
#[test]
fn a_held_primary_receives_until_released() {
    let mut lab = Lab::new();
    lab.unplug();
    lab.stack.device_mut().detach_primary();
    let (primary, to_primary) = MemoryLink::pair("vf0", "sw-primary");
    lab.switch.to_primary = Some(to_primary);
    lab.stack
        .device_mut()
        .attach_held_primary(Box::new(primary))
        .unwrap();
    assert!(lab.stack.device().primary_held());
    assert_eq!(lab.stack.device().path(), Path::Standby);
    let before = lab.stack.device().stats();
    echo_transfer(&mut lab, 64 * 1024, |_, _| {});
    let held = lab.stack.device().stats();
    assert!(
        held.primary.rx_packets > before.primary.rx_packets,
        "RX on the held primary"
    );
    assert_eq!(
        held.primary.tx_packets, before.primary.tx_packets,
        "no TX on it"
    );
    assert!(lab.stack.device_mut().release_primary());
    assert_eq!(lab.stack.device().path(), Path::Primary);
    assert!(!lab.stack.device_mut().release_primary(), "released once");

    let (primary, _) = MemoryLink::pair("vf1", "sw-primary-1");
    let ifindex = primary.ifindex();
    lab.stack
        .device_mut()
        .attach_held_primary(Box::new(primary))
        .unwrap();
    assert_eq!(lab.stack.device().path(), Path::Standby);
    lab.stack
        .device_mut()
        .set_link_health(ifindex, Health::Gone);
    assert!(
        lab.stack.device().primary().is_none(),
        "a gone held primary is dropped"
    );
    assert_eq!(lab.stack.device().path(), Path::Standby);
}

#[test]
fn path_choice_follows_health_and_attachment() {
    let (standby, _far_s) = MemoryLink::pair("virtio0", "x");
    let (primary, _far_p) = MemoryLink::pair("vf0", "y");
    let mut stack = Stack::new(
        &config(STACK_MAC, "10.0.0.20/24", vec![]),
        Some(Box::new(standby)),
        None,
    )
    .unwrap();
    let device = stack.device_mut();
    assert_eq!(device.path(), Path::Standby);
    let primary_index = primary.ifindex();
    device.attach_primary(Box::new(primary)).unwrap();
    assert_eq!(device.path(), Path::Primary);
    // No carrier on the primary: back to the standby until it returns.
    device.set_link_health(primary_index, Health::Down);
    assert_eq!(device.path(), Path::Standby);
    device.set_link_health(primary_index, Health::Up);
    assert_eq!(device.path(), Path::Primary);
    assert_eq!(
        device.stats().last_switch.unwrap().cause,
        SwitchCause::PrimaryRecovered
    );
    // A standby without carrier still carries TX when it is all there is.
    device.detach_primary();
    let standby_index = device.standby().unwrap().ifindex();
    device.set_link_health(standby_index, Health::Down);
    assert_eq!(device.path(), Path::Standby);
    device.set_link_health(standby_index, Health::Gone);
    assert_eq!(device.path(), Path::None);
    assert_eq!(device.stats().switches, 5);
    // With no path, sends are counted, not lost silently.
    assert!(!device.send_raw(&[0u8; 60]));
    assert_eq!(device.stats().tx_no_path, 1);
}

#[test]
fn malformed_frames_are_counted_and_dropped() {
    let (standby, far) = MemoryLink::pair("virtio0", "x");
    let mut stack = Stack::new(
        &config(STACK_MAC, "10.0.0.20/24", vec![]),
        Some(Box::new(standby)),
        None,
    )
    .unwrap();
    let mut far = far;
    let mut send = |frame: &[u8]| {
        far.send(frame.len(), &mut |b| b.copy_from_slice(frame))
            .unwrap();
    };
    send(&[0xff; 10]); // shorter than Ethernet
    let mut ipv4 = vec![0xff; 12];
    ipv4.extend_from_slice(&[0x08, 0x00, 0x45, 0, 0xff, 0xff]); // truncated, huge length
    send(&ipv4);
    let mut arp = vec![0xff; 12];
    arp.extend_from_slice(&[0x08, 0x06, 0, 1]);
    send(&arp);
    stack.poll(Instant::from_millis(0));
    let stats = stack.device().stats();
    assert_eq!(stats.standby.rx_malformed, 3);
    assert_eq!(stats.standby.rx_packets, 0);
}

#[test]
fn announce_sends_one_frame_per_address_on_the_active_path() {
    let (standby, mut far) = MemoryLink::pair("virtio0", "x");
    let mut cfg = config(STACK_MAC, "10.0.0.20/24", vec![]);
    cfg.addresses.push("fd00::20/64".parse::<IpCidr>().unwrap());
    let mut stack = Stack::new(&cfg, Some(Box::new(standby)), None).unwrap();
    assert_eq!(stack.announce(true), 3);
    let mut frames = Vec::new();
    far.recv(16, &mut |f| frames.push(f.to_vec())).unwrap();
    let ethertypes: Vec<[u8; 2]> = frames.iter().map(|f| [f[12], f[13]]).collect();
    assert_eq!(ethertypes, vec![[0x08, 0x06], [0x86, 0xdd], [0x80, 0x35]]);
    assert_eq!(stack.device().stats().standby.tx_packets, 3);
}

/// The stack's own broadcast, flooded back by the switch through the other
/// link, is dropped and counted: smoltcp would answer its own gratuitous
/// ARP. A frame from another MAC is taken as before.
#[test]
fn frames_from_our_own_mac_are_dropped_not_answered() {
    let (standby, mut far_standby) = MemoryLink::pair("virtio0", "x");
    let (primary, mut far_primary) = MemoryLink::pair("vf0", "y");
    let cfg = config(STACK_MAC, "10.0.0.20/24", vec![]);
    let mut stack = Stack::new(&cfg, Some(Box::new(standby)), Some(Box::new(primary))).unwrap();
    assert_eq!(stack.announce(false), 1);
    let mut garp = Vec::new();
    far_primary
        .recv(16, &mut |f| garp.push(f.to_vec()))
        .unwrap();
    assert_eq!(garp.len(), 1, "the gratuitous ARP, on the primary");
    let now = Instant::from_millis(0);
    far_standby
        .send(garp[0].len(), &mut |b| b.copy_from_slice(&garp[0]))
        .unwrap();
    stack.poll(now);
    let mut answers = 0;
    far_primary.recv(16, &mut |_| answers += 1).unwrap();
    far_standby.recv(16, &mut |_| answers += 1).unwrap();
    assert_eq!(answers, 0, "the stack answered its own ARP");
    let standby_counters = stack.device().stats().standby;
    assert_eq!(
        (standby_counters.rx_looped, standby_counters.rx_packets),
        (1, 0)
    );

    // The same request from another host is answered.
    let mut other = garp[0].clone();
    other[6..12].copy_from_slice(&PEER_MAC.0);
    other[22..28].copy_from_slice(&PEER_MAC.0);
    other[28..32].copy_from_slice(&[10, 0, 0, 1]);
    far_standby
        .send(other.len(), &mut |b| b.copy_from_slice(&other))
        .unwrap();
    stack.poll(now);
    far_primary.recv(16, &mut |_| answers += 1).unwrap();
    assert_eq!(answers, 1, "an ARP request from the peer is answered");
    assert_eq!(stack.device().stats().standby.rx_packets, 1);
}

#[test]
fn echo_recovers_when_the_peer_stops_reading_for_a_while() {
    let mut lab = Lab::new();
    let handle = lab.peer.add_tcp_socket();
    let (sockets, iface) = lab.peer.sockets_and_iface();
    sockets
        .get_mut::<tcp::Socket>(handle)
        .connect(iface.context(), (IpAddress::v4(10, 0, 0, 20), 7), 40001)
        .unwrap();
    let total = 4 * 1024 * 1024;
    let (mut sent, mut received) = (0usize, 0usize);
    let mut buf = vec![0u8; 8192];
    for step in 0..400_000 {
        lab.step();
        let socket = lab.peer.sockets_mut().get_mut::<tcp::Socket>(handle);
        if socket.can_send() && sent < total {
            sent += socket
                .send_slice(&pattern(sent, (total - sent).min(4096)))
                .unwrap();
        }
        // Stop reading for a while: both directions fill up and both
        // windows close; reading again must reopen them.
        let paused = (2_000..12_000).contains(&step);
        while !paused && socket.can_recv() {
            let n = socket.recv_slice(&mut buf).unwrap();
            assert_eq!(buf[..n], pattern(received, n)[..]);
            received += n;
        }
        if received == total {
            return;
        }
    }
    panic!("stalled: sent {sent}, received {received}");
}

/// The echo service does not hold a short tail back until the peer has
/// acknowledged what it sent before (Nagle): with a peer that delays its
/// ACKs by 200 ms, a write of a full segment and 4 bytes comes back whole
/// within a few ms.
#[test]
fn the_echo_sends_a_short_tail_at_once() {
    let mut lab = Lab::new();
    let handle = lab.peer.add_tcp_socket();
    let (sockets, iface) = lab.peer.sockets_and_iface();
    let socket = sockets.get_mut::<tcp::Socket>(handle);
    socket.set_ack_delay(Some(smoltcp::time::Duration::from_millis(200)));
    socket.set_nagle_enabled(false);
    socket
        .connect(iface.context(), (IpAddress::v4(10, 0, 0, 20), 7), 40002)
        .unwrap();
    let message = pattern(0, 1460 + 4);
    let mut echoed = Vec::new();
    let mut written_at = None;
    for _ in 0..1_000 {
        lab.step();
        let socket = lab.peer.sockets_mut().get_mut::<tcp::Socket>(handle);
        if socket.may_send() && written_at.is_none() {
            assert_eq!(socket.send_slice(&message).unwrap(), message.len());
            written_at = Some(lab.now);
        }
        let mut buf = [0u8; 2048];
        while socket.can_recv() {
            let n = socket.recv_slice(&mut buf).unwrap();
            echoed.extend_from_slice(&buf[..n]);
        }
        if echoed.len() == message.len() {
            let waited = lab.now - written_at.unwrap();
            assert!(waited.total_millis() <= 5, "the echo took {waited}");
            assert_eq!(echoed, message);
            return;
        }
    }
    panic!("echoed {} of {} bytes", echoed.len(), message.len());
}

#[test]
fn non_unicast_addresses_are_refused_not_a_panic() {
    for bad in ["224.0.0.1/4", "0.0.0.0/0", "ff02::1/16", "::/0"] {
        let cfg = config(STACK_MAC, bad, vec![]);
        let (link, _far) = MemoryLink::pair("virtio0", "x");
        assert!(
            Stack::new(&cfg, Some(Box::new(link)), None).is_err(),
            "{bad}"
        );
    }
}

#[test]
fn a_datapath_stuck_in_a_call_is_not_responsive_and_calls_on_it_end() {
    use std::time::{Duration, Instant};
    use vfailover_netstack::datapath::{CallError, Command, DatapathHandle, DatapathOptions};

    let stack = Stack::new(&config(STACK_MAC, "10.0.0.2/24", vec![]), None, None).unwrap();
    let options = DatapathOptions {
        watch_links: false,
        ..DatapathOptions::default()
    };
    let datapath = DatapathHandle::spawn(stack, options, None).unwrap();
    assert!(datapath.responsive(Duration::from_secs(5)));
    // A call that takes 600 ms holds the thread: a 100 ms probe is late...
    let (started_tx, started) = std::sync::mpsc::channel();
    let stuck = move |_: &mut Stack| {
        let _ = started_tx.send(());
        std::thread::sleep(Duration::from_millis(600));
    };
    datapath.send(Command::Call(Box::new(stuck))).unwrap();
    started.recv_timeout(Duration::from_secs(5)).unwrap();
    assert!(!datapath.responsive(Duration::from_millis(100)));
    // ...and so is a call: the caller gets an error, not a hang.
    let t = Instant::now();
    let late = datapath.call_within(Duration::from_millis(100), |s| s.addresses().len());
    assert!(matches!(late, Err(CallError::Late(_))), "{late:?}");
    assert!(
        t.elapsed() < Duration::from_millis(400),
        "{:?}",
        t.elapsed()
    );
    // Once it is done, the thread answers again.
    assert!(datapath.responsive(Duration::from_secs(5)));
    assert_eq!(datapath.call(|s| s.addresses().len()).unwrap(), 1);
    datapath.stop().unwrap();
}

/// With SACK off, a peer's SYN reaches smoltcp without SACK-permitted (and
/// with a good checksum); with it on, untouched.
#[test]
fn sack_off_takes_sack_permitted_out_of_syns() {
    use smoltcp::phy::{ChecksumCapabilities, Device, RxToken};
    use smoltcp::wire::{
        EthernetAddress, EthernetFrame, EthernetProtocol, EthernetRepr, IpProtocol, Ipv4Address,
        Ipv4Packet, Ipv4Repr, TcpControl, TcpPacket, TcpRepr, TcpSeqNumber,
    };
    use vfailover_netstack::failover::FailoverDevice;

    let (src, dst) = (
        Ipv4Address::new(10, 0, 0, 1),
        Ipv4Address::new(10, 0, 0, 20),
    );
    let tcp = TcpRepr {
        src_port: 40000,
        dst_port: 7,
        control: TcpControl::Syn,
        seq_number: TcpSeqNumber(1),
        ack_number: None,
        window_len: 1000,
        window_scale: None,
        max_seg_size: Some(1460),
        sack_permitted: true,
        sack_ranges: [None; 3],
        timestamp: None,
        payload: &[],
    };
    let caps = ChecksumCapabilities::default();
    let mut syn = vec![0; 34 + tcp.buffer_len()];
    EthernetRepr {
        src_addr: EthernetAddress(PEER_MAC.0),
        dst_addr: EthernetAddress(STACK_MAC.0),
        ethertype: EthernetProtocol::Ipv4,
    }
    .emit(&mut EthernetFrame::new_unchecked(&mut syn[..]));
    Ipv4Repr {
        src_addr: src,
        dst_addr: dst,
        next_header: IpProtocol::Tcp,
        payload_len: tcp.buffer_len(),
        hop_limit: 64,
    }
    .emit(&mut Ipv4Packet::new_unchecked(&mut syn[14..]), &caps);
    tcp.emit(
        &mut TcpPacket::new_unchecked(&mut syn[34..]),
        &src.into(),
        &dst.into(),
        &caps,
    );

    for sack in [false, true] {
        let (standby, mut wire) = MemoryLink::pair("virtio0", "sw-standby");
        let mut device = FailoverDevice::new(
            Some(Box::new(standby)),
            None,
            STACK_MAC,
            1500,
            ResendLimits::default(),
        );
        device.set_tcp_sack(sack);
        wire.send(syn.len(), &mut |b| b.copy_from_slice(&syn))
            .unwrap();
        let (rx, _) = device.receive(Instant::from_millis(0)).expect("the SYN");
        let seen = rx.consume(|frame| {
            let ip = Ipv4Packet::new_checked(&frame[14..]).unwrap();
            TcpRepr::parse(
                &TcpPacket::new_checked(ip.payload()).unwrap(),
                &src.into(),
                &dst.into(),
                &caps,
            )
            .map(|r| (r.sack_permitted, r.max_seg_size))
        });
        assert_eq!(seen, Ok((sack, Some(1460))), "sack {sack}");
    }
}
