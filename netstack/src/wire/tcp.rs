//! TCP segments inside Ethernet frames, as far as the failover device needs
//! them: [`TcpView`] for the resender, and [`strip_sack_permitted`].
//!
//! Why a stack would run without SACK (RFC 2018 leaves it to either end):
//! after a failover the device repeats each connection's ACK three times,
//! so that a peer whose segments were lost on the way retransmits them at
//! once (RFC 5681 fast retransmit). A SACK peer does not take duplicate
//! ACKs without SACK blocks as a loss (Linux marks losses from SACK
//! information only) and waits for its own RTO, at least 200 ms on Linux.
//! smoltcp uses SACK only to report what it received, never for its own
//! retransmissions: without it only a peer's recovery from several losses
//! in one window is slower.

use std::ops::Range;

use smoltcp::wire::{
    EthernetFrame, EthernetProtocol, IpAddress, IpProtocol, Ipv4Packet, Ipv6Packet, TcpPacket,
    TcpSeqNumber,
};

/// TCP option kinds (RFC 9293, RFC 2018).
const END_OF_OPTIONS: u8 = 0;
const NO_OPERATION: u8 = 1;
const SACK_PERMITTED: u8 = 4;

/// A TCP segment in an unfragmented IPv4 or IPv6 packet (extension headers
/// are not followed).
pub struct TcpView {
    pub src: IpAddress,
    pub dst: IpAddress,
    pub src_port: u16,
    pub dst_port: u16,
    pub seq: TcpSeqNumber,
    pub ack: Option<TcpSeqNumber>,
    pub syn: bool,
    pub fin: bool,
    pub rst: bool,
    /// Where the TCP header starts and the segment ends in the frame.
    pub segment: Range<usize>,
    /// Where the TCP payload starts in the frame.
    pub payload_at: usize,
}

impl TcpView {
    pub fn parse(frame: &[u8]) -> Option<TcpView> {
        let (src, dst, segment) = locate(frame)?;
        let tcp = TcpPacket::new_checked(&frame[segment.clone()]).ok()?;
        Some(TcpView {
            src,
            dst,
            src_port: tcp.src_port(),
            dst_port: tcp.dst_port(),
            seq: tcp.seq_number(),
            ack: tcp.ack().then(|| tcp.ack_number()),
            syn: tcp.syn(),
            fin: tcp.fin(),
            rst: tcp.rst(),
            payload_at: segment.start + usize::from(tcp.header_len()),
            segment,
        })
    }

    pub fn payload_len(&self) -> usize {
        self.segment.end - self.payload_at
    }

    /// Sequence space taken: payload, plus one each for SYN and FIN.
    pub fn seq_len(&self) -> usize {
        self.payload_len() + usize::from(self.syn) + usize::from(self.fin)
    }
}

/// The addresses of a TCP segment in `frame` and where the segment lies.
fn locate(frame: &[u8]) -> Option<(IpAddress, IpAddress, Range<usize>)> {
    let eth = EthernetFrame::new_checked(frame).ok()?;
    let l3 = EthernetFrame::<&[u8]>::header_len();
    match eth.ethertype() {
        EthernetProtocol::Ipv4 => {
            let ip = Ipv4Packet::new_checked(eth.payload()).ok()?;
            if ip.next_header() != IpProtocol::Tcp || ip.more_frags() || ip.frag_offset() != 0 {
                return None;
            }
            let start = l3 + usize::from(ip.header_len());
            let end = l3 + usize::from(ip.total_len());
            Some((ip.src_addr().into(), ip.dst_addr().into(), start..end))
        }
        EthernetProtocol::Ipv6 => {
            let ip = Ipv6Packet::new_checked(eth.payload()).ok()?;
            if ip.next_header() != IpProtocol::Tcp {
                return None;
            }
            let start = l3 + ip.header_len();
            let end = start + usize::from(ip.payload_len());
            Some((ip.src_addr().into(), ip.dst_addr().into(), start..end))
        }
        _ => None,
    }
}

/// If `frame` is a TCP SYN offering SACK, overwrite that option with two
/// no-operations and fix the checksum. Returns whether it did.
pub fn strip_sack_permitted(frame: &mut [u8]) -> bool {
    let Some((src, dst, segment)) = locate(frame) else {
        return false;
    };
    let Ok(mut tcp) = TcpPacket::new_checked(&mut frame[segment]) else {
        return false;
    };
    if !tcp.syn() {
        return false;
    }
    let options = tcp.options_mut();
    let mut found = false;
    let mut i = 0;
    while i < options.len() {
        match options[i] {
            END_OF_OPTIONS => break,
            NO_OPERATION => i += 1,
            kind => {
                let len = options.get(i + 1).map_or(0, |l| usize::from(*l));
                if len < 2 || i + len > options.len() {
                    break;
                }
                if kind == SACK_PERMITTED && len == 2 {
                    options[i..i + 2].fill(NO_OPERATION);
                    found = true;
                }
                i += len;
            }
        }
    }
    if found {
        tcp.fill_checksum(&src, &dst);
    }
    found
}

#[cfg(test)]
mod tests {
    use smoltcp::phy::ChecksumCapabilities;
    use smoltcp::wire::{
        EthernetAddress, EthernetRepr, Ipv4Address, Ipv4Repr, TcpControl, TcpRepr,
    };

    use super::*;

    fn syn(sack: bool, ack: Option<u32>) -> Vec<u8> {
        let (src, dst) = (Ipv4Address::new(10, 0, 0, 9), Ipv4Address::new(10, 0, 0, 2));
        let tcp = TcpRepr {
            src_port: 40000,
            dst_port: 7,
            control: TcpControl::Syn,
            seq_number: TcpSeqNumber(100),
            ack_number: ack.map(|a| TcpSeqNumber(a as i32)),
            window_len: 64240,
            window_scale: Some(7),
            max_seg_size: Some(1460),
            sack_permitted: sack,
            sack_ranges: [None; 3],
            timestamp: None,
            payload: &[],
        };
        let mut buf = vec![0; 14 + 20 + tcp.buffer_len()];
        EthernetRepr {
            src_addr: EthernetAddress([2, 0, 0, 0, 0, 9]),
            dst_addr: EthernetAddress([2, 0, 0, 0, 0, 2]),
            ethertype: EthernetProtocol::Ipv4,
        }
        .emit(&mut EthernetFrame::new_unchecked(&mut buf[..]));
        let caps = ChecksumCapabilities::default();
        Ipv4Repr {
            src_addr: src,
            dst_addr: dst,
            next_header: IpProtocol::Tcp,
            payload_len: tcp.buffer_len(),
            hop_limit: 64,
        }
        .emit(&mut Ipv4Packet::new_unchecked(&mut buf[14..]), &caps);
        tcp.emit(
            &mut TcpPacket::new_unchecked(&mut buf[34..]),
            &src.into(),
            &dst.into(),
            &caps,
        );
        buf
    }

    fn parse(frame: &[u8]) -> TcpRepr<'_> {
        let ip = Ipv4Packet::new_checked(&frame[14..]).unwrap();
        TcpRepr::parse(
            &TcpPacket::new_checked(ip.payload()).unwrap(),
            &ip.src_addr().into(),
            &ip.dst_addr().into(),
            &ChecksumCapabilities::default(),
        )
        .expect("a valid segment with a good checksum")
    }

    #[test]
    fn sack_permitted_is_replaced_by_no_operations() {
        let mut frame = syn(true, None);
        assert!(parse(&frame).sack_permitted);
        assert!(strip_sack_permitted(&mut frame));
        let after = parse(&frame);
        assert!(!after.sack_permitted);
        assert_eq!(after.max_seg_size, Some(1460), "other options stay");
        assert_eq!(after.window_scale, Some(7));
        assert!(!strip_sack_permitted(&mut frame), "nothing left to strip");
    }

    #[test]
    fn other_frames_are_left_alone() {
        let mut plain = syn(false, None);
        let copy = plain.clone();
        assert!(!strip_sack_permitted(&mut plain));
        assert_eq!(plain, copy);
        for len in 0..copy.len() {
            let mut cut = copy[..len].to_vec();
            strip_sack_permitted(&mut cut);
        }
    }

    #[test]
    fn a_view_spans_the_segment() {
        let frame = syn(true, Some(5));
        let view = TcpView::parse(&frame).unwrap();
        assert_eq!(view.segment, 34..frame.len());
        assert_eq!((view.payload_len(), view.seq_len()), (0, 1));
        assert_eq!(view.ack, Some(TcpSeqNumber(5)));
        assert!(view.syn && !view.fin && !view.rst);
    }
}
