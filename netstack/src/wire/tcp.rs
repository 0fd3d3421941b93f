//! TCP segments inside Ethernet frames, as far as the failover device needs
//! them: [`TcpView`] for the resender, and [`strip_sack_permitted`].
//!
//! Why a stack would run without SACK (RFC 2018 leaves it to either end):
//! after a failover the device repeats each connection's ACK, so that a
//! peer whose segments were lost on the way retransmits them at once
//! (RFC 5681 fast retransmit). A SACK peer does not take duplicate
//! ACKs without SACK blocks as a loss (Linux marks losses from SACK
//! information only) and waits for its own RTO, at least 200 ms on Linux.
//! smoltcp uses SACK only to report what it received, never for its own
//! retransmissions: without it only a peer's recovery from several losses
//! in one window is slower.

use std::ops::Range;

use smoltcp::wire::{
    EthernetProtocol, IpAddress, IpProtocol, Ipv4Address, Ipv6Address, TcpPacket, TcpSeqNumber,
};

use super::{ETHERNET_HEADER, IPV6_HEADER};

/// TCP option kinds (RFC 9293, RFC 2018).
const END_OF_OPTIONS: u8 = 0;
const NO_OPERATION: u8 = 1;
const SACK_PERMITTED: u8 = 4;

/// Fixed header sizes (IPv4 and TCP without options).
const IPV4_HEADER: usize = 20;
const TCP_HEADER: usize = 20;
/// IPv4 flags and fragment offset word (RFC 791).
const IPV4_MORE_FRAGMENTS: u16 = 0x2000;
const IPV4_OFFSET: u16 = 0x1fff;
/// TCP flag bits in header byte 13 (RFC 9293).
const FLAG_FIN: u8 = 0x01;
const FLAG_SYN: u8 = 0x02;
const FLAG_RST: u8 = 0x04;
const FLAG_ACK: u8 = 0x10;

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
    /// Read by hand rather than through smoltcp's checked packets: the
    /// device parses every TCP frame it sends and receives, and this is
    /// about a third of the instructions (bounds are still checked).
    // Inlined: called twice per TCP frame, and the callers read few fields.
    #[inline(always)]
    pub fn parse(frame: &[u8]) -> Option<TcpView> {
        let (src, dst, segment) = locate(frame)?;
        let tcp = frame.get(segment.clone())?;
        let header: &[u8; TCP_HEADER] = tcp.get(..TCP_HEADER)?.try_into().ok()?;
        let header_len = usize::from(header[12] >> 4) * 4;
        if header_len < TCP_HEADER || header_len > tcp.len() {
            return None;
        }
        let flags = header[13];
        let word = |at: usize| {
            i32::from_be_bytes([header[at], header[at + 1], header[at + 2], header[at + 3]])
        };
        Some(TcpView {
            src,
            dst,
            src_port: u16::from_be_bytes([header[0], header[1]]),
            dst_port: u16::from_be_bytes([header[2], header[3]]),
            seq: TcpSeqNumber(word(4)),
            ack: (flags & FLAG_ACK != 0).then(|| TcpSeqNumber(word(8))),
            syn: flags & FLAG_SYN != 0,
            fin: flags & FLAG_FIN != 0,
            rst: flags & FLAG_RST != 0,
            payload_at: segment.start + header_len,
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
#[inline(always)]
fn locate(frame: &[u8]) -> Option<(IpAddress, IpAddress, Range<usize>)> {
    let ethertype = u16::from_be_bytes([*frame.get(12)?, *frame.get(13)?]);
    let ip = &frame[ETHERNET_HEADER..];
    match EthernetProtocol::from(ethertype) {
        EthernetProtocol::Ipv4 => {
            let header: &[u8; IPV4_HEADER] = ip.get(..IPV4_HEADER)?.try_into().ok()?;
            let header_len = usize::from(header[0] & 0x0f) * 4;
            let total_len = usize::from(u16::from_be_bytes([header[2], header[3]]));
            let fragment = u16::from_be_bytes([header[6], header[7]]);
            if header[0] >> 4 != 4
                || header[9] != u8::from(IpProtocol::Tcp)
                || fragment & (IPV4_MORE_FRAGMENTS | IPV4_OFFSET) != 0
                || header_len < IPV4_HEADER
                || total_len < header_len
                || total_len > ip.len()
            {
                return None;
            }
            let src = Ipv4Address::from(u32::from_be_bytes(octets(&header[12..16])?));
            let dst = Ipv4Address::from(u32::from_be_bytes(octets(&header[16..20])?));
            let range = ETHERNET_HEADER + header_len..ETHERNET_HEADER + total_len;
            Some((src.into(), dst.into(), range))
        }
        EthernetProtocol::Ipv6 => {
            let header: &[u8; IPV6_HEADER] = ip.get(..IPV6_HEADER)?.try_into().ok()?;
            let payload_len = usize::from(u16::from_be_bytes([header[4], header[5]]));
            if header[0] >> 4 != 6
                || header[6] != u8::from(IpProtocol::Tcp)
                || IPV6_HEADER + payload_len > ip.len()
            {
                return None;
            }
            let src = Ipv6Address::from(u128::from_be_bytes(octets(&header[8..24])?));
            let dst = Ipv6Address::from(u128::from_be_bytes(octets(&header[24..40])?));
            let start = ETHERNET_HEADER + IPV6_HEADER;
            Some((src.into(), dst.into(), start..start + payload_len))
        }
        _ => None,
    }
}

fn octets<const N: usize>(bytes: &[u8]) -> Option<[u8; N]> {
    bytes.try_into().ok()
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
        EthernetAddress, EthernetFrame, EthernetRepr, Ipv4Packet, Ipv4Repr, Ipv6Packet, Ipv6Repr,
        TcpControl, TcpRepr,
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

    /// The hand parser against smoltcp's checked one, over IPv4 and IPv6,
    /// flags and payloads, every truncation and single-byte corruption.
    #[test]
    fn the_view_agrees_with_smoltcp() {
        let v6 = |frame: &[u8]| -> Vec<u8> {
            let ip = Ipv4Packet::new_checked(&frame[14..]).unwrap();
            let tcp = ip.payload();
            let mut out = frame[..14].to_vec();
            out[12..14].copy_from_slice(&0x86ddu16.to_be_bytes());
            out.resize(14 + 40 + tcp.len(), 0);
            Ipv6Repr {
                src_addr: Ipv6Address::new(0xfd00, 0, 0, 0, 0, 0, 0, 9),
                dst_addr: Ipv6Address::new(0xfd00, 0, 0, 0, 0, 0, 0, 2),
                next_header: IpProtocol::Tcp,
                payload_len: tcp.len(),
                hop_limit: 64,
            }
            .emit(&mut Ipv6Packet::new_unchecked(&mut out[14..]));
            out[54..].copy_from_slice(tcp);
            out
        };
        let mut frames = vec![syn(true, None), syn(false, Some(7))];
        let mut data = syn(false, Some(9));
        data[47] = 0x19; // ACK, PSH, FIN
        data.extend_from_slice(&[0xab; 100]);
        let total = (data.len() - 14) as u16;
        data[16..18].copy_from_slice(&total.to_be_bytes());
        frames.push(data);
        frames.extend(frames.clone().iter().map(|f| v6(f)));
        for frame in &frames {
            for len in 0..=frame.len() {
                check(&frame[..len]);
            }
            for at in 0..frame.len() {
                for value in [0x00, 0x0f, 0x45, 0x60, 0xff] {
                    let mut bad = frame.clone();
                    bad[at] = value;
                    check(&bad);
                }
            }
        }
    }

    fn check(frame: &[u8]) {
        let view = TcpView::parse(frame);
        if frame.len() < 14 {
            assert!(view.is_none());
            return;
        }
        let eth = EthernetFrame::new_checked(frame).ok();
        let smoltcp = eth.and_then(|eth| {
            let (src, dst, tcp): (IpAddress, IpAddress, &[u8]) = match eth.ethertype() {
                EthernetProtocol::Ipv4 => {
                    let ip = Ipv4Packet::new_checked(eth.payload()).ok()?;
                    let whole = ip.next_header() == IpProtocol::Tcp
                        && !ip.more_frags()
                        && ip.frag_offset() == 0;
                    whole.then_some(())?;
                    (ip.src_addr().into(), ip.dst_addr().into(), ip.payload())
                }
                EthernetProtocol::Ipv6 => {
                    let ip = Ipv6Packet::new_checked(eth.payload()).ok()?;
                    (ip.next_header() == IpProtocol::Tcp).then_some(())?;
                    (ip.src_addr().into(), ip.dst_addr().into(), ip.payload())
                }
                _ => return None,
            };
            let tcp = TcpPacket::new_checked(tcp).ok()?;
            Some((
                src,
                dst,
                tcp.src_port(),
                tcp.seq_number(),
                tcp.ack(),
                tcp.fin(),
                tcp.payload().len(),
            ))
        });
        let ours = view.map(|v| {
            let ack = v.ack.is_some();
            (v.src, v.dst, v.src_port, v.seq, ack, v.fin, v.payload_len())
        });
        // smoltcp's length checks do not look at the IP version; the view
        // refuses a wrong one. Any other difference is a bug.
        let expected = if frame[12..14] == [0x08, 0x00] { 4 } else { 6 };
        let wrong_version = frame.len() > 14 && frame[14] >> 4 != expected;
        if ours != smoltcp {
            assert!(ours.is_none() && wrong_version, "frame {frame:02x?}");
        }
    }
}
