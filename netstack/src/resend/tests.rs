use std::net::IpAddr;
use std::time::{Duration, Instant};

use smoltcp::phy::ChecksumCapabilities;
use smoltcp::wire::{
    EthernetAddress, EthernetFrame, EthernetProtocol, EthernetRepr, IpAddress, IpProtocol,
    Ipv4Packet, Ipv4Repr, Ipv6Packet, Ipv6Repr, TcpControl, TcpPacket, TcpRepr, TcpSeqNumber,
};

use super::*;

const STACK_MAC: EthernetAddress = EthernetAddress([0x02, 0, 0, 0, 0, 1]);
const PEER_MAC: EthernetAddress = EthernetAddress([0x02, 0, 0, 0, 0, 2]);

/// Both ends of a connection and how to build its frames.
#[derive(Clone, Copy)]
struct Conn {
    stack: IpAddr,
    peer: IpAddr,
    stack_port: u16,
    peer_port: u16,
}

const V4: Conn = Conn {
    stack: IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 2)),
    peer: IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 9)),
    stack_port: 7,
    peer_port: 40000,
};

fn v6() -> Conn {
    Conn {
        stack: "fd00::2".parse().unwrap(),
        peer: "fd00::9".parse().unwrap(),
        ..V4
    }
}

/// What a segment carries.
#[derive(Clone, Copy, Default)]
struct Seg<'a> {
    seq: u32,
    ack: Option<u32>,
    control: Option<TcpControl>,
    payload: &'a [u8],
    window: u16,
}

impl Conn {
    /// A frame from the stack to the peer.
    fn sent(&self, seg: Seg) -> Vec<u8> {
        frame(
            STACK_MAC,
            PEER_MAC,
            self.stack,
            self.peer,
            self.stack_port,
            self.peer_port,
            seg,
        )
    }

    /// A frame from the peer to the stack.
    fn received(&self, seg: Seg) -> Vec<u8> {
        frame(
            PEER_MAC,
            STACK_MAC,
            self.peer,
            self.stack,
            self.peer_port,
            self.stack_port,
            seg,
        )
    }

    fn data(&self, seq: u32, ack: u32, payload: &[u8]) -> Vec<u8> {
        self.sent(Seg {
            seq,
            ack: Some(ack),
            payload,
            window: 1000,
            ..Seg::default()
        })
    }

    fn ack(&self, ack: u32) -> Vec<u8> {
        self.received(Seg {
            seq: 5000,
            ack: Some(ack),
            window: 1000,
            ..Seg::default()
        })
    }
}

fn frame(
    src_mac: EthernetAddress,
    dst_mac: EthernetAddress,
    src: IpAddr,
    dst: IpAddr,
    src_port: u16,
    dst_port: u16,
    seg: Seg,
) -> Vec<u8> {
    let tcp = TcpRepr {
        src_port,
        dst_port,
        control: seg.control.unwrap_or(TcpControl::None),
        seq_number: TcpSeqNumber(seg.seq as i32),
        ack_number: seg.ack.map(|a| TcpSeqNumber(a as i32)),
        window_len: seg.window,
        window_scale: None,
        max_seg_size: (seg.control == Some(TcpControl::Syn)).then_some(1460),
        sack_permitted: seg.control == Some(TcpControl::Syn),
        sack_ranges: [None; 3],
        timestamp: None,
        payload: seg.payload,
    };
    let caps = ChecksumCapabilities::default();
    let (src_ip, dst_ip): (IpAddress, IpAddress) = (src.into(), dst.into());
    let (ethertype, ip_len) = match src {
        IpAddr::V4(_) => (EthernetProtocol::Ipv4, 20),
        IpAddr::V6(_) => (EthernetProtocol::Ipv6, 40),
    };
    let mut buf = vec![0; 14 + ip_len + tcp.buffer_len()];
    EthernetRepr {
        src_addr: src_mac,
        dst_addr: dst_mac,
        ethertype,
    }
    .emit(&mut EthernetFrame::new_unchecked(&mut buf[..]));
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => Ipv4Repr {
            src_addr: s,
            dst_addr: d,
            next_header: IpProtocol::Tcp,
            payload_len: tcp.buffer_len(),
            hop_limit: 64,
        }
        .emit(&mut Ipv4Packet::new_unchecked(&mut buf[14..]), &caps),
        (IpAddr::V6(s), IpAddr::V6(d)) => Ipv6Repr {
            src_addr: s,
            dst_addr: d,
            next_header: IpProtocol::Tcp,
            payload_len: tcp.buffer_len(),
            hop_limit: 64,
        }
        .emit(&mut Ipv6Packet::new_unchecked(&mut buf[14..])),
        _ => unreachable!("one family per connection"),
    }
    tcp.emit(
        &mut TcpPacket::new_unchecked(&mut buf[14 + ip_len..]),
        &src_ip,
        &dst_ip,
        &caps,
    );
    buf
}

fn resender() -> Resender {
    Resender::new(ResendLimits::default())
}

fn resent(r: &mut Resender) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    r.resend(|f| {
        out.push(f.to_vec());
        true
    });
    out
}

/// A frame the resender built, parsed and checked (checksums included).
struct Parsed {
    seq: u32,
    ack: Option<u32>,
    control: TcpControl,
    window: u16,
    payload: Vec<u8>,
}

fn parse(frame: &[u8]) -> Parsed {
    let eth = EthernetFrame::new_checked(frame).unwrap();
    let caps = ChecksumCapabilities::default();
    let (src, dst, l4): (IpAddress, IpAddress, &[u8]) = match eth.ethertype() {
        EthernetProtocol::Ipv4 => {
            let ip = Ipv4Packet::new_checked(eth.payload()).unwrap();
            assert!(ip.verify_checksum(), "IPv4 checksum");
            (ip.src_addr().into(), ip.dst_addr().into(), ip.payload())
        }
        EthernetProtocol::Ipv6 => {
            let ip = Ipv6Packet::new_checked(eth.payload()).unwrap();
            (ip.src_addr().into(), ip.dst_addr().into(), ip.payload())
        }
        other => panic!("not IP: {other}"),
    };
    let tcp = TcpRepr::parse(&TcpPacket::new_checked(l4).unwrap(), &src, &dst, &caps)
        .expect("a valid TCP segment with a good checksum");
    Parsed {
        seq: tcp.seq_number.0 as u32,
        ack: tcp.ack_number.map(|a| a.0 as u32),
        control: tcp.control,
        window: tcp.window_len,
        payload: tcp.payload.to_vec(),
    }
}

#[test]
fn unacknowledged_segments_go_again_in_order_then_the_acks() {
    let now = Instant::now();
    let mut r = resender();
    let c = V4;
    let (a, b, d) = (
        c.data(100, 900, &[1; 10]),
        c.data(110, 900, &[2; 10]),
        c.data(120, 950, &[3; 5]),
    );
    for f in [&a, &b, &d] {
        r.on_sent(f, now);
    }
    r.on_received(&c.ack(110));
    let out = resent(&mut r);
    assert_eq!(
        out.len(),
        2 + REPEATED_ACKS,
        "two held segments, then the ACKs"
    );
    assert_eq!(out[0], b);
    assert_eq!(out[1], d);
    for ack in &out[2..] {
        let p = parse(ack);
        assert_eq!(
            (p.seq, p.ack, p.control, p.window),
            (125, Some(950), TcpControl::None, 1000)
        );
        assert!(p.payload.is_empty());
    }
    let counters = r.counters();
    assert_eq!(
        (counters.rounds, counters.segments, counters.acks),
        (1, 2, REPEATED_ACKS as u64)
    );
    assert_eq!(counters.bytes, (b.len() + d.len()) as u64);
    assert_eq!(counters.held_bytes, (b.len() + d.len()) as u64);
    assert_eq!(counters.connections, 1);
}

#[test]
fn a_partly_acknowledged_segment_stays_and_a_full_ack_frees_everything() {
    let now = Instant::now();
    let mut r = resender();
    let c = V4;
    r.on_sent(&c.data(100, 1, &[1; 10]), now);
    r.on_received(&c.ack(105));
    assert_eq!(resent(&mut r).len(), 1 + REPEATED_ACKS);
    r.on_received(&c.ack(110));
    assert_eq!(r.counters().held_bytes, 0);
    let out = resent(&mut r);
    assert_eq!(
        out.len(),
        REPEATED_ACKS,
        "only the ACKs: nothing is unacknowledged"
    );
}

#[test]
fn retransmissions_by_the_stack_are_not_held_twice() {
    let now = Instant::now();
    let mut r = resender();
    let c = V4;
    let first = c.data(100, 1, &[1; 10]);
    r.on_sent(&first, now);
    r.on_sent(&c.data(100, 1, &[1; 10]), now);
    r.on_sent(&c.data(100, 1, &[1; 4]), now);
    assert_eq!(r.counters().held_bytes, first.len() as u64);
    // A retransmission that also carries new data is kept.
    r.on_sent(&c.data(100, 1, &[1; 20]), now);
    assert_eq!(resent(&mut r).len(), 2 + REPEATED_ACKS);
}

#[test]
fn sequence_numbers_wrap() {
    let now = Instant::now();
    let mut r = resender();
    let c = V4;
    let start = u32::MAX - 4;
    r.on_sent(&c.data(start, 1, &[1; 10]), now); // ends at 5, past the wrap
    r.on_sent(&c.data(5, 1, &[2; 10]), now);
    r.on_received(&c.ack(5));
    let out = resent(&mut r);
    assert_eq!(out.len(), 1 + REPEATED_ACKS);
    assert_eq!(parse(&out[0]).seq, 5);
    assert_eq!(
        parse(&out[1]).seq,
        15,
        "the ACK's sequence number is past the wrap too"
    );
    r.on_received(&c.ack(15));
    assert_eq!(r.counters().held_bytes, 0);
}

#[test]
fn an_ack_beyond_what_was_sent_frees_nothing() {
    let now = Instant::now();
    let mut r = resender();
    let c = V4;
    r.on_sent(&c.data(100, 1, &[1; 10]), now);
    r.on_received(&c.ack(111));
    r.on_received(&c.ack(100_000));
    r.on_received(&c.ack(50));
    assert_eq!(resent(&mut r).len(), 1 + REPEATED_ACKS);
}

#[test]
fn syn_and_fin_take_sequence_space_and_are_resent() {
    let now = Instant::now();
    let mut r = resender();
    let c = V4;
    let syn_ack = c.sent(Seg {
        seq: 1000,
        ack: Some(77),
        control: Some(TcpControl::Syn),
        window: 500,
        ..Seg::default()
    });
    r.on_sent(&syn_ack, now);
    let out = resent(&mut r);
    assert_eq!(
        out,
        vec![syn_ack],
        "a SYN is resent, and no ACK is made from it"
    );
    r.on_received(&c.ack(1001));
    let fin = c.sent(Seg {
        seq: 1001,
        ack: Some(77),
        control: Some(TcpControl::Fin),
        window: 500,
        ..Seg::default()
    });
    r.on_sent(&fin, now);
    let out = resent(&mut r);
    assert_eq!(out[0], fin);
    assert_eq!(parse(&out[1]).seq, 1002);
}

#[test]
fn a_connection_is_forgotten_on_reset_or_when_both_fins_are_done() {
    let now = Instant::now();
    let c = V4;
    let mut r = resender();
    r.on_sent(&c.data(100, 1, &[1; 10]), now);
    r.on_received(&c.received(Seg {
        seq: 1,
        control: Some(TcpControl::Rst),
        ..Seg::default()
    }));
    assert_eq!(r.counters().connections, 0);
    assert_eq!(r.counters().held_bytes, 0);

    r.on_sent(&c.data(100, 1, &[1; 10]), now);
    r.on_sent(
        &c.sent(Seg {
            seq: 110,
            ack: Some(1),
            control: Some(TcpControl::Rst),
            ..Seg::default()
        }),
        now,
    );
    assert_eq!(r.counters().connections, 0);

    r.on_sent(
        &c.sent(Seg {
            seq: 100,
            ack: Some(1),
            control: Some(TcpControl::Fin),
            ..Seg::default()
        }),
        now,
    );
    r.on_received(&c.received(Seg {
        seq: 1,
        ack: Some(101),
        control: Some(TcpControl::Fin),
        ..Seg::default()
    }));
    assert_eq!(
        r.counters().connections,
        0,
        "our FIN acknowledged and theirs seen"
    );
}

#[test]
fn connections_are_kept_apart_and_ipv6_works() {
    let now = Instant::now();
    let mut r = resender();
    let other = Conn {
        peer_port: 40001,
        ..V4
    };
    r.on_sent(&V4.data(100, 1, &[1; 10]), now);
    r.on_sent(&other.data(100, 1, &[2; 10]), now);
    r.on_sent(&v6().data(100, 1, &[3; 10]), now);
    r.on_received(&other.ack(110));
    r.on_received(&v6().ack(110));
    let out = resent(&mut r);
    assert_eq!(out.len(), 1 + 3 * REPEATED_ACKS);
    assert!(out.contains(&V4.data(100, 1, &[1; 10])));
    let v6_acks = out.iter().filter(|f| {
        EthernetFrame::new_checked(&f[..]).unwrap().ethertype() == EthernetProtocol::Ipv6
    });
    for ack in v6_acks {
        let p = parse(ack);
        assert_eq!((p.seq, p.ack), (110, Some(1)));
    }
}

#[test]
fn the_byte_budget_bounds_what_is_held() {
    let now = Instant::now();
    let one = V4.data(0, 1, &[0; 1000]).len();
    let mut r = Resender::new(ResendLimits {
        max_bytes: 3 * one,
        ..ResendLimits::default()
    });
    for i in 0..5u32 {
        r.on_sent(&V4.data(i * 1000, 1, &[0; 1000]), now);
    }
    let counters = r.counters();
    assert_eq!(counters.held_bytes, 3 * one as u64);
    assert_eq!(counters.untracked, 2);
    // Freed room is used again.
    r.on_received(&V4.ack(1000));
    r.on_sent(&V4.data(5000, 1, &[0; 1000]), now);
    assert_eq!(r.counters().held_bytes, 3 * one as u64);
}

#[test]
fn the_longest_idle_connection_makes_room() {
    let start = Instant::now();
    let mut r = Resender::new(ResendLimits {
        max_connections: 2,
        ..ResendLimits::default()
    });
    let conn = |port| Conn {
        peer_port: port,
        ..V4
    };
    r.on_sent(&conn(1).data(0, 1, &[1]), start);
    r.on_sent(&conn(2).data(0, 1, &[1]), start + Duration::from_millis(1));
    r.on_sent(&conn(1).data(1, 1, &[1]), start + Duration::from_millis(2));
    r.on_sent(&conn(3).data(0, 1, &[1]), start + Duration::from_millis(3));
    let counters = r.counters();
    assert_eq!((counters.connections, counters.evicted), (2, 1));
    let out = resent(&mut r);
    assert!(out.contains(&conn(1).data(0, 1, &[1])));
    assert!(out.contains(&conn(3).data(0, 1, &[1])));
    assert!(
        !out.contains(&conn(2).data(0, 1, &[1])),
        "port 2 was idle longest"
    );
}

#[test]
fn frames_a_link_refused_are_not_counted() {
    let now = Instant::now();
    let mut r = resender();
    r.on_sent(&V4.data(0, 1, &[1; 10]), now);
    r.resend(|_| false);
    assert_eq!(r.counters().rounds, 0);
    assert_eq!(r.counters().segments, 0);
}

#[test]
fn disabled_holds_nothing() {
    let now = Instant::now();
    let mut r = Resender::new(ResendLimits {
        enabled: false,
        ..ResendLimits::default()
    });
    r.on_sent(&V4.data(0, 1, &[1; 10]), now);
    assert!(resent(&mut r).is_empty());
    assert_eq!(r.counters(), ResendCounters::default());
}

#[test]
fn truncated_and_foreign_frames_are_ignored() {
    let now = Instant::now();
    let mut r = resender();
    let data = V4.data(100, 1, &[1; 10]);
    let ack = V4.ack(105);
    for len in 0..data.len() {
        r.on_sent(&data[..len], now);
    }
    r.on_sent(&data, now);
    for len in 0..ack.len() {
        r.on_received(&ack[..len]);
    }
    let mut garbage = data.clone();
    garbage[12] = 0x08;
    garbage[13] = 0x06; // ARP
    r.on_sent(&garbage, now);
    r.on_received(&garbage);
    // Only the whole data frame counted.
    assert_eq!(r.counters().held_bytes, data.len() as u64);
    assert_eq!(resent(&mut r).len(), 1 + REPEATED_ACKS);
}
