//! [`Resender`]: a bounded copy of the TCP segments the stack sent and the
//! peer has not acknowledged yet, sent again at once after a path change.
//!
//! Why: the frames on a vanished VF's TX ring, and those sent while a
//! migrated standby's switch port had not moved yet, are lost. smoltcp
//! then waits for its retransmission timer, at least 1 s
//! (`RTTE_MIN_RTO`), and has no way to be told to retransmit sooner; the
//! peer often cannot help with duplicate ACKs (the stack's window may be
//! zero). So the device keeps the unacknowledged segments itself and, on a
//! switch or a migration signal, sends them again on the new path, then
//! repeats each connection's ACK four times (a peer without SACK takes
//! three duplicate ACKs as a loss and retransmits at once; the first copy
//! may count as a window update). Duplicates are
//! harmless to TCP: the peer's ACK moves smoltcp on.
//!
//! Pure: frames in (sent by the stack, received from the peer), frames out
//! when asked. Sequence numbers compare modulo 2^32 ([`TcpSeqNumber`]).
//! Memory is bounded twice: by [`ResendLimits::max_bytes`] over all
//! connections (a segment that does not fit is not kept, and counted) and
//! by [`ResendLimits::max_connections`] (the longest idle is forgotten).
//! A connection is forgotten on a RST either way, and once both sides
//! have sent FIN and ours is acknowledged.

use std::collections::VecDeque;
use std::time::Instant;

use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};
use smoltcp::phy::ChecksumCapabilities;
use smoltcp::wire::{
    EthernetFrame, EthernetProtocol, IpAddress, IpProtocol, Ipv4Packet, Ipv4Repr, Ipv6Packet,
    Ipv6Repr, TcpControl, TcpPacket, TcpRepr, TcpSeqNumber,
};

use crate::wire::tcp::TcpView;

/// Copies of the ACK sent per connection. A peer without SACK enters fast
/// retransmit on the third duplicate ACK (RFC 5681), but Linux takes the
/// first copy as a window update, not a duplicate: its sequence number
/// (one past what the stack sent) is newer than that of the data segment
/// the peer last took a window from (`tcp_may_update_window`). Seen in
/// the lab with three copies: the peer counted two and waited 200 ms for
/// its RTO.
const REPEATED_ACKS: usize = 4;
/// Spare frame buffers kept for reuse, so the hot path does not allocate.
const POOL: usize = 256;

/// How much the resender may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResendLimits {
    /// Off: nothing is kept or resent.
    pub enabled: bool,
    /// Frame bytes held over all connections.
    pub max_bytes: usize,
    /// Connections followed at once.
    pub max_connections: usize,
}

impl Default for ResendLimits {
    fn default() -> Self {
        // 64 KiB windows: 4 MiB holds 64 connections' full windows.
        ResendLimits {
            enabled: true,
            max_bytes: 4 << 20,
            max_connections: 1024,
        }
    }
}

/// What the resender did and holds, for [`crate::stats::Stats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResendCounters {
    /// Path changes and migration signals that sent something again.
    pub rounds: u64,
    /// Data, SYN or FIN segments sent again.
    pub segments: u64,
    /// Their frame bytes.
    pub bytes: u64,
    /// ACKs repeated ([`REPEATED_ACKS`] per connection and round).
    pub acks: u64,
    /// Segments not kept because [`ResendLimits::max_bytes`] was reached.
    pub untracked: u64,
    /// Connections forgotten to stay within [`ResendLimits::max_connections`].
    pub evicted: u64,
    /// Connections followed now.
    pub connections: u64,
    /// Frame bytes held now.
    pub held_bytes: u64,
}

/// A connection, from the stack's side.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct FlowKey {
    local: IpAddress,
    local_port: u16,
    remote: IpAddress,
    remote_port: u16,
}

/// One sent segment and the sequence space it covers.
struct Segment {
    end: TcpSeqNumber,
    frame: Vec<u8>,
}

struct Flow {
    key: FlowKey,
    /// Oldest sequence number not acknowledged by the peer.
    una: TcpSeqNumber,
    /// One past the highest sequence number sent.
    snd_nxt: TcpSeqNumber,
    /// Unacknowledged segments, in sequence order (retransmissions of what
    /// is held are not kept again).
    segments: VecDeque<Segment>,
    /// Ethernet, IP and TCP header of the last segment sent: its ACK number
    /// and window are the stack's latest.
    last_header: Vec<u8>,
    /// End of our FIN, once sent.
    fin_end: Option<TcpSeqNumber>,
    peer_fin: bool,
    last_active: Instant,
}

impl Flow {
    fn held(&self) -> usize {
        self.segments.iter().map(|s| s.frame.len()).sum()
    }
}

impl FlowKey {
    fn sent(seg: &TcpView) -> FlowKey {
        FlowKey {
            local: seg.src,
            local_port: seg.src_port,
            remote: seg.dst,
            remote_port: seg.dst_port,
        }
    }

    fn received(seg: &TcpView) -> FlowKey {
        FlowKey {
            local: seg.dst,
            local_port: seg.dst_port,
            remote: seg.src,
            remote_port: seg.src_port,
        }
    }
}

/// The unacknowledged segments of every connection, and the means to send
/// them again.
pub struct Resender {
    limits: ResendLimits,
    flows: Vec<Flow>,
    /// Where each connection is in `flows`: a fast hash (the peer chooses
    /// only its port, so flooding one bucket gains it nothing it could not
    /// get with the connection limit).
    index: FxHashMap<FlowKey, usize>,
    /// The connection of the last frame looked up: smoltcp sends a
    /// socket's segments in a burst and bulk data arrives in runs, so most
    /// frames skip the hash.
    recent: usize,
    pool: Vec<Vec<u8>>,
    held: usize,
    counters: ResendCounters,
    /// Where a repeated ACK is built.
    scratch: Vec<u8>,
}

impl Resender {
    pub fn new(limits: ResendLimits) -> Self {
        Resender {
            limits,
            flows: Vec::new(),
            index: FxHashMap::default(),
            recent: 0,
            pool: Vec::new(),
            held: 0,
            counters: ResendCounters::default(),
            scratch: Vec::new(),
        }
    }

    pub fn counters(&self) -> ResendCounters {
        ResendCounters {
            connections: self.flows.len() as u64,
            held_bytes: self.held as u64,
            ..self.counters
        }
    }

    /// Note a frame the stack sent (or tried to: one no link took is lost
    /// just the same).
    pub fn on_sent(&mut self, frame: &[u8], now: Instant) {
        if !self.limits.enabled {
            return;
        }
        let Some(seg) = TcpView::parse(frame) else {
            return;
        };
        let key = FlowKey::sent(&seg);
        let found = self.find(&key);
        if seg.rst {
            if let Some(at) = found {
                self.forget(at);
            }
            return;
        }
        let at = found.unwrap_or_else(|| self.add(key, seg.seq, now));
        let flow = &mut self.flows[at];
        flow.last_active = now;
        flow.last_header.clear();
        flow.last_header.extend_from_slice(&frame[..seg.payload_at]);
        let len = seg.seq_len();
        if len == 0 {
            return;
        }
        let end = seg.seq + len;
        if seg.fin {
            flow.fin_end = Some(end);
        }
        let held_end = flow.segments.back().map_or(flow.una, |s| s.end);
        if end > flow.snd_nxt {
            flow.snd_nxt = end;
        }
        // A retransmission of what is held (or was acknowledged) adds nothing.
        if end <= held_end {
            return;
        }
        if self.held + frame.len() > self.limits.max_bytes {
            self.counters.untracked += 1;
            return;
        }
        let mut copy = self.pool.pop().unwrap_or_default();
        copy.clear();
        copy.extend_from_slice(frame);
        self.held += copy.len();
        flow.segments.push_back(Segment { end, frame: copy });
    }

    /// Note a frame received from the peer: its ACK frees what it covers.
    pub fn on_received(&mut self, frame: &[u8]) {
        if self.flows.is_empty() {
            return;
        }
        let Some(seg) = TcpView::parse(frame) else {
            return;
        };
        let Some(at) = self.find(&FlowKey::received(&seg)) else {
            return;
        };
        if seg.rst {
            self.forget(at);
            return;
        }
        let flow = &mut self.flows[at];
        flow.peer_fin |= seg.fin;
        // An ACK beyond what was sent is bogus (or for an older connection
        // on the same ports): it must not free anything.
        if let Some(ack) = seg.ack.filter(|&a| a > flow.una && a <= flow.snd_nxt) {
            flow.una = ack;
            while flow.segments.front().is_some_and(|s| s.end <= ack) {
                if let Some(done) = flow.segments.pop_front() {
                    self.held -= done.frame.len();
                    recycle(&mut self.pool, done.frame);
                }
            }
        }
        if flow.peer_fin && flow.fin_end.is_some_and(|end| flow.una >= end) {
            self.forget(at);
        }
    }

    /// Send every held segment again through `send`, then each
    /// connection's latest ACK [`REPEATED_ACKS`] times. `send` returns
    /// whether a link took the frame; only those are counted.
    pub fn resend(&mut self, mut send: impl FnMut(&[u8]) -> bool) {
        if self.flows.is_empty() {
            return;
        }
        let before = self.counters;
        for flow in &self.flows {
            for segment in &flow.segments {
                if send(&segment.frame) {
                    self.counters.segments += 1;
                    self.counters.bytes += segment.frame.len() as u64;
                }
            }
            if build_ack(flow, &mut self.scratch) {
                for _ in 0..REPEATED_ACKS {
                    if send(&self.scratch) {
                        self.counters.acks += 1;
                    }
                }
            }
        }
        if self.counters != before {
            self.counters.rounds += 1;
        }
    }

    #[inline(always)]
    fn find(&mut self, key: &FlowKey) -> Option<usize> {
        if self.flows.get(self.recent).is_some_and(|f| f.key == *key) {
            return Some(self.recent);
        }
        let at = *self.index.get(key)?;
        self.recent = at;
        Some(at)
    }

    /// Follow a new connection, first forgetting the longest idle one if
    /// the table is full. Returns where it is.
    fn add(&mut self, key: FlowKey, seq: TcpSeqNumber, now: Instant) -> usize {
        if self.flows.len() >= self.limits.max_connections {
            let idle = (0..self.flows.len()).min_by_key(|&at| self.flows[at].last_active);
            if let Some(at) = idle {
                self.forget(at);
                self.counters.evicted += 1;
            }
        }
        let at = self.flows.len();
        self.flows.push(Flow {
            key,
            una: seq,
            snd_nxt: seq,
            segments: VecDeque::new(),
            last_header: Vec::new(),
            fin_end: None,
            peer_fin: false,
            last_active: now,
        });
        self.index.insert(key, at);
        self.recent = at;
        at
    }

    fn forget(&mut self, at: usize) {
        let flow = self.flows.swap_remove(at);
        self.index.remove(&flow.key);
        if let Some(moved) = self.flows.get(at) {
            self.index.insert(moved.key, at);
        }
        self.held -= flow.held();
        for segment in flow.segments {
            recycle(&mut self.pool, segment.frame);
        }
    }
}

/// Keep a freed frame buffer for the next copy, up to [`POOL`] of them.
fn recycle(pool: &mut Vec<Vec<u8>>, frame: Vec<u8>) {
    if pool.len() < POOL {
        pool.push(frame);
    }
}

/// Build into `out` a pure ACK from `flow`'s last header: same addresses,
/// ACK number, window and timestamp, sequence number one past what was
/// sent, no payload, options a non-SYN segment may carry. False when there
/// is nothing to acknowledge yet (no ACK flag, or a SYN).
fn build_ack(flow: &Flow, out: &mut Vec<u8>) -> bool {
    let Some(header) = AckHeader::parse(&flow.last_header) else {
        return false;
    };
    let mut tcp = header.tcp;
    tcp.control = TcpControl::None;
    tcp.seq_number = flow.snd_nxt;
    tcp.max_seg_size = None;
    tcp.window_scale = None;
    tcp.sack_permitted = false;
    tcp.payload = &[];
    let eth_len = EthernetFrame::<&[u8]>::header_len();
    let ip_len = match &header.ip {
        IpHeader::V4(ip) => ip.buffer_len(),
        IpHeader::V6(ip) => ip.buffer_len(),
    };
    out.clear();
    out.resize(eth_len + ip_len + tcp.header_len(), 0);
    out[..eth_len].copy_from_slice(&flow.last_header[..eth_len]);
    let caps = ChecksumCapabilities::default();
    let (src, dst) = match header.ip {
        IpHeader::V4(mut ip) => {
            ip.payload_len = tcp.header_len();
            ip.emit(&mut Ipv4Packet::new_unchecked(&mut out[eth_len..]), &caps);
            (ip.src_addr.into(), ip.dst_addr.into())
        }
        IpHeader::V6(mut ip) => {
            ip.payload_len = tcp.header_len();
            ip.emit(&mut Ipv6Packet::new_unchecked(&mut out[eth_len..]));
            (ip.src_addr.into(), ip.dst_addr.into())
        }
    };
    let mut packet = TcpPacket::new_unchecked(&mut out[eth_len + ip_len..]);
    tcp.emit(&mut packet, &src, &dst, &caps);
    true
}

enum IpHeader {
    V4(Ipv4Repr),
    V6(Ipv6Repr),
}

/// A stored header, parsed back for [`build_ack`].
struct AckHeader<'a> {
    ip: IpHeader,
    tcp: TcpRepr<'a>,
}

impl<'a> AckHeader<'a> {
    fn parse(header: &'a [u8]) -> Option<AckHeader<'a>> {
        let eth = EthernetFrame::new_checked(header).ok()?;
        // The stored header has no payload, so the lengths in it are too
        // long for the buffer: read the fields, not the checked packet.
        let ip_bytes = &header[EthernetFrame::<&[u8]>::header_len()..];
        let ignore = ChecksumCapabilities::ignored();
        let (ip, tcp_bytes, src, dst): (_, &[u8], IpAddress, IpAddress) = match eth.ethertype() {
            EthernetProtocol::Ipv4 => {
                let packet = Ipv4Packet::new_unchecked(ip_bytes);
                let len = usize::from(packet.header_len());
                let repr = Ipv4Repr {
                    src_addr: packet.src_addr(),
                    dst_addr: packet.dst_addr(),
                    next_header: IpProtocol::Tcp,
                    payload_len: 0,
                    hop_limit: packet.hop_limit(),
                };
                (
                    IpHeader::V4(repr),
                    ip_bytes.get(len..)?,
                    repr.src_addr.into(),
                    repr.dst_addr.into(),
                )
            }
            EthernetProtocol::Ipv6 => {
                let packet = Ipv6Packet::new_unchecked(ip_bytes);
                let len = packet.header_len();
                let repr = Ipv6Repr {
                    src_addr: packet.src_addr(),
                    dst_addr: packet.dst_addr(),
                    next_header: IpProtocol::Tcp,
                    payload_len: 0,
                    hop_limit: packet.hop_limit(),
                };
                (
                    IpHeader::V6(repr),
                    ip_bytes.get(len..)?,
                    repr.src_addr.into(),
                    repr.dst_addr.into(),
                )
            }
            _ => return None,
        };
        let tcp = TcpRepr::parse(
            &TcpPacket::new_checked(tcp_bytes).ok()?,
            &src,
            &dst,
            &ignore,
        )
        .ok()?;
        if tcp.ack_number.is_none() || tcp.control == TcpControl::Syn {
            return None;
        }
        Some(AckHeader { ip, tcp })
    }
}

#[cfg(test)]
mod tests;
