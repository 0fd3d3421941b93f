//! The receive path: `FailoverDevice` + `Stack` (smoltcp and the built-in
//! tcp-echo, udp-echo and tcp-discard services) fed arbitrary frames on the
//! standby and the primary through in-memory links, polled in between on a
//! virtual clock.
//!
//! The input is a list of records. Each one starts with a control byte:
//!
//! ```text
//! bit 0     link: 0 standby, 1 primary
//! bits 1-3  kind: 0 raw frame, 1 TCP/IPv4, 2 TCP/IPv6, 3 UDP/IPv4,
//!           4 UDP/IPv6, 5 IPv4 (any protocol), 6 IPv6 (any next header),
//!           7 event (link health, neighbour refresh, announce)
//! bits 4-5  time step before the poll: 0, 10 ms, 1 s, 65 s
//! bit 6     1: no poll after this record (frames pile up for one round)
//! bit 7     mangle: XOR one byte of the built frame
//! ```
//!
//! Structured kinds build valid Ethernet/IP/TCP|UDP headers to the stack
//! (checksums right) from a few fuzzed fields and fuzz the rest, so the
//! fuzzer reaches the socket code at once. A small peer model answers the
//! stack's ARP and neighbour solicitations and tracks sequence numbers per
//! connection, so segments can acknowledge what the stack sent (its ISN is
//! random) and carry in-order data.
//!
//! Properties: no panic; every frame the stack sends is one it would
//! accept itself, from its MAC, within the MTU; after the input, with both
//! links up and polled until idle, every fed frame was counted once per
//! link: `rx_packets + rx_malformed + rx_looped == frames fed`, and `rx_malformed`
//! equals the frames `check_frame` refuses.
#![no_main]

use std::collections::HashMap;

use libfuzzer_sys::fuzz_target;
use smoltcp::time::{Duration, Instant};
use smoltcp::wire::{IpCidr, Ipv4Address, Ipv6Address};
use vfailover_netstack::link::memory::MemoryLink;
use vfailover_netstack::link::{Health, Link};
use vfailover_netstack::mac::MacAddr;
use vfailover_netstack::resend::ResendLimits;
use vfailover_netstack::stack::{Buffers, ServiceConfig, ServiceKind, Stack, StackConfig};
use vfailover_netstack::wire::check::check_frame;

const STACK_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
const STACK_V4: [u8; 4] = [10, 0, 0, 2];
const PEERS_V4: [[u8; 4]; 2] = [[10, 0, 0, 1], [10, 0, 0, 3]];
const STACK_V6: [u8; 16] = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];
const PEERS_V6: [[u8; 16]; 2] = [
    [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
    [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 3],
];
/// Echo, discard, a closed port, echo again (weights echo).
const STACK_PORTS: [u16; 4] = [7, 9, 19, 7];
const MAX_FRAME: usize = 1514;
const MTU: usize = 1500;
/// Auto-replies (ARP, NA) per run, so a reply loop cannot run forever.
const MAX_REPLIES: usize = 256;

const STANDBY: usize = 0;
const PRIMARY: usize = 1;

fn peer_mac(peer: usize) -> [u8; 6] {
    [0x02, 0, 0, 0, 0, 0x10 + peer as u8]
}

struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn byte(&mut self) -> Option<u8> {
        let (&b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(b)
    }
    fn u16(&mut self) -> u16 {
        u16::from_be_bytes([self.byte().unwrap_or(0), self.byte().unwrap_or(0)])
    }
    fn bytes(&mut self, n: usize) -> &[u8] {
        let n = n.min(self.0.len());
        let (taken, rest) = self.0.split_at(n);
        self.0 = rest;
        taken
    }
}

/// One TCP conversation seen by the peer model.
#[derive(Clone, Copy)]
struct Conn {
    /// Next sequence number the peer would send.
    peer_next: u32,
    /// Next sequence number expected from the stack, once it sent anything.
    stack_next: Option<u32>,
}

/// (IPv6?, peer index, peer port, stack port)
type Key = (bool, usize, u16, u16);

struct Harness {
    stack: Stack,
    /// The far ends: sending here delivers to the stack's link.
    peers: [MemoryLink; 2],
    ifindex: [u32; 2],
    fed: [u64; 2],
    malformed: [u64; 2],
    now: Instant,
    conns: HashMap<Key, Conn>,
    pending: Vec<(usize, Vec<u8>)>,
    replies: usize,
}

impl Harness {
    fn new(small_buffers: bool) -> Harness {
        let (standby, standby_peer) = MemoryLink::pair("standby", "standby-peer");
        let (primary, primary_peer) = MemoryLink::pair("primary", "primary-peer");
        let ifindex = [standby.ifindex(), primary.ifindex()];
        let buffers = if small_buffers {
            Buffers {
                tcp: 2048,
                udp_packets: 4,
                udp_bytes: 2048,
                tcp_connections: 2,
            }
        } else {
            Buffers::default()
        };
        let config = StackConfig {
            mac: MacAddr(STACK_MAC),
            addresses: vec![
                IpCidr::new(Ipv4Address::from(STACK_V4).into(), 24),
                IpCidr::new(Ipv6Address::from(STACK_V6).into(), 64),
            ],
            gateway_v4: Some(Ipv4Address::from(PEERS_V4[0])),
            gateway_v6: Some(Ipv6Address::from(PEERS_V6[0])),
            services: vec![
                ServiceConfig {
                    kind: ServiceKind::TcpEcho,
                    port: 7,
                },
                ServiceConfig {
                    kind: ServiceKind::UdpEcho,
                    port: 7,
                },
                ServiceConfig {
                    kind: ServiceKind::TcpDiscard,
                    port: 9,
                },
            ],
            mtu: MTU,
            buffers,
            resend: ResendLimits::default(),
            // Half the runs take the SYN rewrite path too.
            tcp_sack: !small_buffers,
        };
        let stack = Stack::new(&config, Some(Box::new(standby)), Some(Box::new(primary)))
            .expect("the fuzz stack's config is valid");
        Harness {
            stack,
            peers: [standby_peer, primary_peer],
            ifindex,
            fed: [0; 2],
            malformed: [0; 2],
            now: Instant::now(),
            conns: HashMap::new(),
            pending: Vec::new(),
            replies: 0,
        }
    }

    fn feed(&mut self, link: usize, mut frame: Vec<u8>) {
        frame.truncate(MAX_FRAME);
        let sent = self.peers[link]
            .send(frame.len(), &mut |buf| buf.copy_from_slice(&frame))
            .expect("a memory link takes frames up to its max length");
        assert!(sent);
        if debug() {
            eprintln!("rx on link {link}: {}", describe(&frame));
        }
        self.fed[link] += 1;
        if check_frame(&frame).is_err() {
            self.malformed[link] += 1;
        }
    }

    fn poll(&mut self) {
        for (link, frame) in std::mem::take(&mut self.pending) {
            self.feed(link, frame);
        }
        self.stack.poll(self.now);
        self.drain_tx();
    }

    /// Take what the stack sent, check it, and let the peer model react.
    fn drain_tx(&mut self) {
        for link in [STANDBY, PRIMARY] {
            let mut frames = Vec::new();
            self.peers[link]
                .recv(usize::MAX, &mut |f| frames.push(f.to_vec()))
                .expect("peer ends stay up");
            for frame in frames {
                assert!(frame.len() <= MAX_FRAME, "sent {} bytes", frame.len());
                assert_eq!(
                    check_frame(&frame),
                    Ok(()),
                    "the stack sent a frame it would refuse"
                );
                assert_eq!(frame[6..12], STACK_MAC, "sent from another MAC");
                if debug() {
                    eprintln!("tx on link {link}: {}", describe(&frame));
                }
                self.observe(link, &frame);
            }
        }
    }

    fn observe(&mut self, link: usize, f: &[u8]) {
        let ethertype = u16::from_be_bytes([f[12], f[13]]);
        let ip = &f[14..];
        match ethertype {
            0x0806 if ip.len() >= 28 && ip[6..8] == [0, 1] => {
                if let Some(peer) = PEERS_V4.iter().position(|p| ip[24..28] == p[..]) {
                    self.reply(link, arp(2, peer, STACK_MAC, STACK_V4));
                }
            }
            0x0800 if ip.len() >= 20 && ip[9] == 6 => {
                let ihl = usize::from(ip[0] & 0xf) * 4;
                let total = usize::from(u16::from_be_bytes([ip[2], ip[3]])).min(ip.len());
                if let Some(peer) = PEERS_V4.iter().position(|p| ip[16..20] == p[..]) {
                    if total >= ihl {
                        self.observe_tcp(false, peer, &ip[ihl..total]);
                    }
                }
            }
            0x86dd if ip.len() >= 40 => {
                let len = usize::from(u16::from_be_bytes([ip[4], ip[5]]));
                let payload = &ip[40..(40 + len).min(ip.len())];
                let dst = &ip[24..40];
                match ip[6] {
                    58 if payload.len() >= 24 && payload[0] == 135 => {
                        if let Some(peer) = PEERS_V6.iter().position(|p| payload[8..24] == p[..]) {
                            self.reply(link, neighbour_advert(peer));
                        }
                    }
                    6 => {
                        if let Some(peer) = PEERS_V6.iter().position(|p| dst == p) {
                            self.observe_tcp(true, peer, payload);
                        }
                    }
                    _ => {}
                }
            }
            _ => {}
        }
    }

    fn observe_tcp(&mut self, v6: bool, peer: usize, tcp: &[u8]) {
        if tcp.len() < 20 {
            return;
        }
        let stack_port = u16::from_be_bytes([tcp[0], tcp[1]]);
        let peer_port = u16::from_be_bytes([tcp[2], tcp[3]]);
        let seq = u32::from_be_bytes([tcp[4], tcp[5], tcp[6], tcp[7]]);
        let offset = usize::from(tcp[12] >> 4) * 4;
        let flags = tcp[13];
        let data = tcp.len().saturating_sub(offset) as u32;
        let next = seq
            .wrapping_add(data)
            .wrapping_add(u32::from(flags & 0x02 != 0))
            .wrapping_add(u32::from(flags & 0x01 != 0));
        let conn = self
            .conns
            .entry((v6, peer, peer_port, stack_port))
            .or_insert_with(|| new_conn(peer_port));
        conn.stack_next = Some(next);
    }

    fn reply(&mut self, link: usize, frame: Vec<u8>) {
        if self.replies < MAX_REPLIES {
            self.replies += 1;
            self.pending.push((link, frame));
        }
    }

    fn record(&mut self, input: &mut Input) -> Option<()> {
        let ctrl = input.byte()?;
        let link = usize::from(ctrl & 1);
        let kind = (ctrl >> 1) & 7;
        let step = [0, 10, 1_000, 65_000][usize::from((ctrl >> 4) & 3)];
        let poll = ctrl & 0x40 == 0;
        let mangle = ctrl & 0x80 != 0;
        let frame = match kind {
            0 => {
                let len = usize::from(input.u16()) % (MAX_FRAME + 1);
                Some(input.bytes(len).to_vec())
            }
            1 | 2 => Some(self.tcp(kind == 2, input)),
            3 | 4 => Some(udp(kind == 4, input)),
            5 => {
                let protocol = input.byte()?;
                let fragment = if input.byte()? & 1 != 0 {
                    input.u16()
                } else {
                    0x4000
                };
                let peer = usize::from(input.byte()? & 1);
                let len = usize::from(input.u16()) % (MTU - 20 + 1);
                let mut payload = input.bytes(len).to_vec();
                if protocol == 1 && payload.len() >= 4 {
                    payload[2..4].fill(0);
                    let sum = checksum(0, &payload);
                    payload[2..4].copy_from_slice(&sum.to_be_bytes());
                }
                Some(ipv4_frame(peer, protocol, fragment, &payload))
            }
            6 => {
                let next_header = input.byte()?;
                let peer = usize::from(input.byte()? & 1);
                let len = usize::from(input.u16()) % (MTU - 40 + 1);
                let mut payload = input.bytes(len).to_vec();
                if next_header == 58 && payload.len() >= 4 {
                    payload[2..4].fill(0);
                    let sum = checksum(pseudo_v6(peer, 58, payload.len()), &payload);
                    payload[2..4].copy_from_slice(&sum.to_be_bytes());
                }
                Some(ipv6_frame(peer, next_header, 64, &payload))
            }
            _ => {
                self.event(input.byte()?);
                None
            }
        };
        if let Some(mut frame) = frame {
            if mangle && !frame.is_empty() {
                let at = usize::from(input.u16()) % frame.len();
                frame[at] ^= input.byte().unwrap_or(0xff);
            }
            self.feed(link, frame);
        }
        self.now += Duration::from_millis(step);
        if poll {
            self.poll();
        }
        Some(())
    }

    fn event(&mut self, op: u8) {
        let device = self.stack.device_mut();
        match op % 8 {
            0 => device.set_link_health(self.ifindex[PRIMARY], Health::Down),
            1 => device.set_link_health(self.ifindex[PRIMARY], Health::Gone),
            2 => device.set_link_health(self.ifindex[PRIMARY], Health::Up),
            3 => device.set_link_health(self.ifindex[STANDBY], Health::Down),
            4 => device.set_link_health(self.ifindex[STANDBY], Health::Up),
            5 => {
                self.stack.refresh_neighbors();
            }
            6 => {
                // What the daemon does on a migration signal.
                self.stack.announce(false);
                self.stack.device_mut().resend_unacked();
            }
            _ => {
                self.stack.announce(true);
            }
        }
    }

    /// A TCP segment from a peer to the stack.
    fn tcp(&mut self, v6: bool, input: &mut Input) -> Vec<u8> {
        let select = input.byte().unwrap_or(0);
        let peer = usize::from(select & 1);
        let peer_port = 40_000 + u16::from((select >> 1) & 3);
        let stack_port = STACK_PORTS[usize::from((select >> 3) & 3)];
        let flags = input.byte().unwrap_or(0x02);
        let seq_delta = input.byte().unwrap_or(0) as i8;
        let ack_delta = input.byte().unwrap_or(0) as i8;
        let window = input.u16();
        let options_len = usize::from(input.byte().unwrap_or(0) % 11) * 4;
        let mut options = input.bytes(options_len).to_vec();
        options.resize(options_len, 0);
        let len = usize::from(input.u16()) % (MTU - 60 - options_len + 1);
        let data = input.bytes(len);

        let conn = self
            .conns
            .entry((v6, peer, peer_port, stack_port))
            .or_insert_with(|| new_conn(peer_port));
        let seq = conn.peer_next.wrapping_add(seq_delta as u32);
        let ack = conn.stack_next.unwrap_or(0).wrapping_add(ack_delta as u32);
        conn.peer_next = seq
            .wrapping_add(data.len() as u32)
            .wrapping_add(u32::from(flags & 0x02 != 0))
            .wrapping_add(u32::from(flags & 0x01 != 0));

        let mut tcp = Vec::with_capacity(20 + options_len + data.len());
        tcp.extend_from_slice(&peer_port.to_be_bytes());
        tcp.extend_from_slice(&stack_port.to_be_bytes());
        tcp.extend_from_slice(&seq.to_be_bytes());
        tcp.extend_from_slice(&ack.to_be_bytes());
        tcp.push((((20 + options_len) / 4) as u8) << 4);
        tcp.push(flags);
        tcp.extend_from_slice(&window.to_be_bytes());
        tcp.extend_from_slice(&[0, 0, 0, 0]);
        tcp.extend_from_slice(&options);
        tcp.extend_from_slice(data);
        transport_frame(v6, peer, 6, tcp, 16)
    }
}

fn new_conn(peer_port: u16) -> Conn {
    Conn {
        peer_next: 0x1000_0000u32.wrapping_mul(u32::from(peer_port)),
        stack_next: None,
    }
}

/// A UDP datagram from a peer to the stack.
fn udp(v6: bool, input: &mut Input) -> Vec<u8> {
    let select = input.byte().unwrap_or(0);
    let peer = usize::from(select & 1);
    let peer_port = 40_000 + u16::from((select >> 1) & 3);
    let stack_port = STACK_PORTS[usize::from((select >> 3) & 3)];
    let len = usize::from(input.u16()) % (MTU - 48 + 1);
    let data = input.bytes(len);
    let mut udp = Vec::with_capacity(8 + data.len());
    udp.extend_from_slice(&peer_port.to_be_bytes());
    udp.extend_from_slice(&stack_port.to_be_bytes());
    udp.extend_from_slice(&((8 + data.len()) as u16).to_be_bytes());
    udp.extend_from_slice(&[0, 0]);
    udp.extend_from_slice(data);
    transport_frame(v6, peer, 17, udp, 6)
}

/// Fill the checksum at `at` of a TCP or UDP segment and wrap it in IP and
/// Ethernet.
fn transport_frame(
    v6: bool,
    peer: usize,
    protocol: u8,
    mut segment: Vec<u8>,
    at: usize,
) -> Vec<u8> {
    let pseudo = if v6 {
        pseudo_v6(peer, protocol, segment.len())
    } else {
        let mut sum = sum_words(0, &PEERS_V4[peer]);
        sum = sum_words(sum, &STACK_V4);
        sum + u32::from(protocol) + segment.len() as u32
    };
    let mut sum = checksum(pseudo, &segment);
    if protocol == 17 && sum == 0 {
        sum = 0xffff;
    }
    segment[at..at + 2].copy_from_slice(&sum.to_be_bytes());
    if v6 {
        ipv6_frame(peer, protocol, 64, &segment)
    } else {
        ipv4_frame(peer, protocol, 0x4000, &segment)
    }
}

fn ethernet(dst: [u8; 6], src: [u8; 6], ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(14 + payload.len());
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

fn ipv4_frame(peer: usize, protocol: u8, fragment: u16, payload: &[u8]) -> Vec<u8> {
    let mut ip = Vec::with_capacity(20 + payload.len());
    ip.extend_from_slice(&[0x45, 0]);
    ip.extend_from_slice(&((20 + payload.len()) as u16).to_be_bytes());
    ip.extend_from_slice(&[0, 1]);
    ip.extend_from_slice(&fragment.to_be_bytes());
    ip.extend_from_slice(&[64, protocol, 0, 0]);
    ip.extend_from_slice(&PEERS_V4[peer]);
    ip.extend_from_slice(&STACK_V4);
    let sum = checksum(0, &ip);
    ip[10..12].copy_from_slice(&sum.to_be_bytes());
    ip.extend_from_slice(payload);
    ethernet(STACK_MAC, peer_mac(peer), 0x0800, &ip)
}

fn ipv6_frame(peer: usize, next_header: u8, hop_limit: u8, payload: &[u8]) -> Vec<u8> {
    ipv6_frame_to(peer, STACK_MAC, STACK_V6, next_header, hop_limit, payload)
}

fn ipv6_frame_to(
    peer: usize,
    dst_mac: [u8; 6],
    dst: [u8; 16],
    next_header: u8,
    hop_limit: u8,
    payload: &[u8],
) -> Vec<u8> {
    let mut ip = Vec::with_capacity(40 + payload.len());
    ip.extend_from_slice(&[0x60, 0, 0, 0]);
    ip.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    ip.extend_from_slice(&[next_header, hop_limit]);
    ip.extend_from_slice(&PEERS_V6[peer]);
    ip.extend_from_slice(&dst);
    ip.extend_from_slice(payload);
    ethernet(dst_mac, peer_mac(peer), 0x86dd, &ip)
}

/// ARP from `peer` about itself: a request (op 1, broadcast) or a reply.
fn arp(op: u16, peer: usize, target_mac: [u8; 6], target_ip: [u8; 4]) -> Vec<u8> {
    let mut a = vec![0, 1, 0x08, 0x00, 6, 4];
    a.extend_from_slice(&op.to_be_bytes());
    a.extend_from_slice(&peer_mac(peer));
    a.extend_from_slice(&PEERS_V4[peer]);
    a.extend_from_slice(&if op == 1 { [0; 6] } else { target_mac });
    a.extend_from_slice(&target_ip);
    let dst = if op == 1 { [0xff; 6] } else { target_mac };
    ethernet(dst, peer_mac(peer), 0x0806, &a)
}

/// A neighbour solicitation from `peer` for the stack's address (carrying
/// the peer's MAC, so the stack learns it).
fn neighbour_solicit(peer: usize) -> Vec<u8> {
    let mut icmp = vec![135, 0, 0, 0, 0, 0, 0, 0];
    icmp.extend_from_slice(&STACK_V6);
    icmp.extend_from_slice(&[1, 1]);
    icmp.extend_from_slice(&peer_mac(peer));
    let mut group = [0xff, 0x02, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0xff, 0, 0, 0];
    group[13..].copy_from_slice(&STACK_V6[13..]);
    let pseudo = pseudo_v6_to(peer, group, 58, icmp.len());
    let sum = checksum(pseudo, &icmp);
    icmp[2..4].copy_from_slice(&sum.to_be_bytes());
    let mac = [0x33, 0x33, 0xff, group[13], group[14], group[15]];
    ipv6_frame_to(peer, mac, group, 58, 255, &icmp)
}

/// A solicited neighbour advertisement of `peer`'s address to the stack.
fn neighbour_advert(peer: usize) -> Vec<u8> {
    let mut icmp = vec![136, 0, 0, 0, 0x60, 0, 0, 0];
    icmp.extend_from_slice(&PEERS_V6[peer]);
    icmp.extend_from_slice(&[2, 1]);
    icmp.extend_from_slice(&peer_mac(peer));
    let sum = checksum(pseudo_v6(peer, 58, icmp.len()), &icmp);
    icmp[2..4].copy_from_slice(&sum.to_be_bytes());
    ipv6_frame(peer, 58, 255, &icmp)
}

fn pseudo_v6(peer: usize, next_header: u8, len: usize) -> u32 {
    pseudo_v6_to(peer, STACK_V6, next_header, len)
}

fn pseudo_v6_to(peer: usize, dst: [u8; 16], next_header: u8, len: usize) -> u32 {
    let mut sum = sum_words(0, &PEERS_V6[peer]);
    sum = sum_words(sum, &dst);
    sum + (len as u32 >> 16) + (len as u32 & 0xffff) + u32::from(next_header)
}

fn sum_words(mut sum: u32, data: &[u8]) -> u32 {
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        sum += u32::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [last] = chunks.remainder() {
        sum += u32::from(*last) << 8;
    }
    sum
}

/// The Internet checksum of `data` with `initial` (a pseudo-header sum).
fn checksum(initial: u32, data: &[u8]) -> u16 {
    let mut sum = u64::from(initial) + u64::from(sum_words(0, data));
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// `FUZZ_DEBUG=1`: print what the stack sends (to check that seeds get
/// where they should, e.g. `target/.../stack_frames corpus/stack_frames/seed-tcp-echo-v4`).
fn debug() -> bool {
    static DEBUG: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *DEBUG.get_or_init(|| std::env::var_os("FUZZ_DEBUG").is_some())
}

fn describe(f: &[u8]) -> String {
    if check_frame(f).is_err() {
        return format!("malformed, {} bytes", f.len());
    }
    let ethertype = u16::from_be_bytes([f[12], f[13]]);
    let (protocol, l4) = match ethertype {
        0x0800 => (f[14 + 9], &f[14 + usize::from(f[14] & 0xf) * 4..]),
        0x86dd => (f[14 + 6], &f[14 + 40..]),
        _ => return format!("ethertype {ethertype:#06x}, {} bytes", f.len()),
    };
    match protocol {
        6 if l4.len() >= 20 => format!(
            "TCP {} -> {} flags {:#04x} seq {} ack {} data {}",
            u16::from_be_bytes([l4[0], l4[1]]),
            u16::from_be_bytes([l4[2], l4[3]]),
            l4[13],
            u32::from_be_bytes([l4[4], l4[5], l4[6], l4[7]]),
            u32::from_be_bytes([l4[8], l4[9], l4[10], l4[11]]),
            l4.len() - usize::from(l4[12] >> 4) * 4
        ),
        _ => format!(
            "ethertype {ethertype:#06x} protocol {protocol}, {} bytes",
            f.len()
        ),
    }
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input(data);
    let setup = input.byte().unwrap_or(0);
    let mut h = Harness::new(setup & 1 != 0);
    if setup & 2 == 0 {
        // Peers introduce themselves, so replies need no resolution first.
        for peer in 0..2 {
            h.feed(STANDBY, arp(1, peer, [0; 6], STACK_V4));
            h.feed(STANDBY, neighbour_solicit(peer));
        }
    }
    h.poll();
    // Bounded: every record takes at least one byte.
    while h.record(&mut input).is_some() {}

    // Both links up, then poll until every frame was read: each round
    // takes up to 64 frames per link.
    let device = h.stack.device_mut();
    device.set_link_health(h.ifindex[PRIMARY], Health::Up);
    device.set_link_health(h.ifindex[STANDBY], Health::Up);
    let rounds = (h.fed[0] + h.fed[1] + MAX_REPLIES as u64) / 64 + 16;
    for round in 0.. {
        h.poll();
        let s = h.stack.device().stats();
        let read = [
            s.standby.rx_packets + s.standby.rx_malformed + s.standby.rx_looped,
            s.primary.rx_packets + s.primary.rx_malformed + s.primary.rx_looped,
        ];
        if read == h.fed && h.pending.is_empty() {
            break;
        }
        assert!(
            read[0] <= h.fed[0] && read[1] <= h.fed[1],
            "read {read:?} of {:?}",
            h.fed
        );
        assert!(
            round < rounds,
            "frames left unread: read {read:?} of {:?}",
            h.fed
        );
    }
    let s = h.stack.device().stats();
    assert_eq!(
        s.standby.rx_malformed, h.malformed[STANDBY],
        "standby rx_malformed"
    );
    assert_eq!(
        s.primary.rx_malformed, h.malformed[PRIMARY],
        "primary rx_malformed"
    );
    // Timers (retransmissions, TIME-WAIT, neighbour expiry) still run.
    for step in [1_000, 120_000] {
        h.now += Duration::from_millis(step);
        h.poll();
    }
});
