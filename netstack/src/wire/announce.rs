//! Announce frames: gratuitous ARP, IPv6 unsolicited neighbour advertisement
//! and RARP, built with pnet's packet types; and the ARP request and
//! neighbour solicitation that re-resolve a neighbour after a migration
//! while the entry in use stays valid.
//!
//! Shapes follow what peers and switches expect: a gratuitous ARP is a
//! broadcast request with sender = target = the address (as Linux's
//! `arp_notify`), an unsolicited NA goes to ff02::1 with the override flag
//! (RFC 4861 §7.2.6), a RARP is QEMU's self-announce (op 3, sender = target =
//! MAC, addresses zero). Short frames are padded to the 60-byte minimum.

use std::net::{Ipv4Addr, Ipv6Addr};

use pnet_base::MacAddr as PnetMac;
use pnet_packet::arp::{ArpHardwareTypes, ArpOperation, ArpOperations, MutableArpPacket};
use pnet_packet::ethernet::{EtherType, EtherTypes, MutableEthernetPacket};
use pnet_packet::icmpv6::ndp::{
    MutableNeighborAdvertPacket, MutableNeighborSolicitPacket, NdpOption, NdpOptionTypes,
};
use pnet_packet::icmpv6::{self, Icmpv6Code, Icmpv6Packet, Icmpv6Types};
use pnet_packet::ip::IpNextHeaderProtocols;
use pnet_packet::ipv6::MutableIpv6Packet;

use super::{ETHERNET_HEADER, IPV6_HEADER};
use crate::mac::MacAddr;

const ARP_LEN: usize = 28;
const MIN_FRAME: usize = 60;
/// NA or NS: 24 bytes of header and target, 8 of link-layer address option.
const NDP_LEN: usize = 32;
/// Router=0, Solicited=0, Override=1.
const NA_FLAG_OVERRIDE: u8 = 0x20;
const ETHERTYPE_RARP: EtherType = EtherType(0x8035);
const RARP_REQUEST_REVERSE: ArpOperation = ArpOperation(3);

fn ethernet(frame: &mut [u8], src: PnetMac, dst: PnetMac, ethertype: EtherType) {
    let mut eth = MutableEthernetPacket::new(frame).expect("frame holds an Ethernet header");
    eth.set_destination(dst);
    eth.set_source(src);
    eth.set_ethertype(ethertype);
}

fn arp_frame(
    mac: MacAddr,
    ethertype: EtherType,
    operation: ArpOperation,
    (ip, target_ip): (Ipv4Addr, Ipv4Addr),
    target_mac: MacAddr,
) -> Vec<u8> {
    let mac = PnetMac::from(mac.0);
    let mut frame = vec![0u8; MIN_FRAME];
    ethernet(&mut frame, mac, PnetMac::broadcast(), ethertype);
    let mut arp = MutableArpPacket::new(&mut frame[ETHERNET_HEADER..ETHERNET_HEADER + ARP_LEN])
        .expect("frame holds an ARP packet");
    arp.set_hardware_type(ArpHardwareTypes::Ethernet);
    arp.set_protocol_type(EtherTypes::Ipv4);
    arp.set_hw_addr_len(6);
    arp.set_proto_addr_len(4);
    arp.set_operation(operation);
    arp.set_sender_hw_addr(mac);
    arp.set_sender_proto_addr(ip);
    arp.set_target_hw_addr(target_mac.0.into());
    arp.set_target_proto_addr(target_ip);
    frame
}

/// A gratuitous ARP request announcing that `ip` lives at `mac`.
pub fn gratuitous_arp(mac: MacAddr, ip: Ipv4Addr) -> Vec<u8> {
    arp_frame(
        mac,
        EtherTypes::Arp,
        ArpOperations::Request,
        (ip, ip),
        MacAddr([0; 6]),
    )
}

/// A broadcast ARP request from `sender` (at `mac`) for `target`.
pub fn arp_request(mac: MacAddr, sender: Ipv4Addr, target: Ipv4Addr) -> Vec<u8> {
    arp_frame(
        mac,
        EtherTypes::Arp,
        ArpOperations::Request,
        (sender, target),
        MacAddr([0; 6]),
    )
}

/// A RARP "request reverse" for `mac`, as QEMU sends after migration.
pub fn rarp(mac: MacAddr) -> Vec<u8> {
    arp_frame(
        mac,
        ETHERTYPE_RARP,
        RARP_REQUEST_REVERSE,
        (Ipv4Addr::UNSPECIFIED, Ipv4Addr::UNSPECIFIED),
        mac,
    )
}

/// An unsolicited neighbour advertisement for `ip` to all nodes.
pub fn unsolicited_na(mac: MacAddr, ip: Ipv6Addr) -> Vec<u8> {
    let all_nodes = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);
    ndp_frame(mac, ip, all_nodes, |icmp| {
        let mut na = MutableNeighborAdvertPacket::new(icmp).expect("holds an NA");
        na.set_icmpv6_type(Icmpv6Types::NeighborAdvert);
        na.set_icmpv6_code(Icmpv6Code(0));
        na.set_flags(NA_FLAG_OVERRIDE);
        na.set_target_addr(ip);
        na.set_options(&[link_layer_option(NdpOptionTypes::TargetLLAddr, mac)]);
    })
}

/// A neighbour solicitation from `src` (at `mac`) for `target`, to the
/// target's solicited-node group (RFC 4861 §7.2.2).
pub fn neighbor_solicitation(mac: MacAddr, src: Ipv6Addr, target: Ipv6Addr) -> Vec<u8> {
    let t = target.octets();
    let group = Ipv6Addr::from([
        0xff, 0x02, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0xff, t[13], t[14], t[15],
    ]);
    ndp_frame(mac, src, group, |icmp| {
        let mut ns = MutableNeighborSolicitPacket::new(icmp).expect("holds an NS");
        ns.set_icmpv6_type(Icmpv6Types::NeighborSolicit);
        ns.set_icmpv6_code(Icmpv6Code(0));
        ns.set_target_addr(target);
        ns.set_options(&[link_layer_option(NdpOptionTypes::SourceLLAddr, mac)]);
    })
}

fn link_layer_option(
    option_type: pnet_packet::icmpv6::ndp::NdpOptionType,
    mac: MacAddr,
) -> NdpOption {
    NdpOption {
        option_type,
        length: 1,
        data: mac.0.to_vec(),
    }
}

/// A neighbour discovery message from `src` to the multicast group `dst`,
/// its body written by `body`, its checksum filled in.
fn ndp_frame(mac: MacAddr, src: Ipv6Addr, dst: Ipv6Addr, body: impl FnOnce(&mut [u8])) -> Vec<u8> {
    let mut frame = vec![0u8; ETHERNET_HEADER + IPV6_HEADER + NDP_LEN];
    let d = dst.octets();
    ethernet(
        &mut frame,
        mac.0.into(),
        PnetMac::new(0x33, 0x33, d[12], d[13], d[14], d[15]),
        EtherTypes::Ipv6,
    );
    {
        let mut ip6 = MutableIpv6Packet::new(&mut frame[ETHERNET_HEADER..]).expect("holds IPv6");
        ip6.set_version(6);
        ip6.set_payload_length(NDP_LEN as u16);
        ip6.set_next_header(IpNextHeaderProtocols::Icmpv6);
        // RFC 4861: receivers drop ND messages whose hop limit is not 255.
        ip6.set_hop_limit(255);
        ip6.set_source(src);
        ip6.set_destination(dst);
    }
    let icmp = &mut frame[ETHERNET_HEADER + IPV6_HEADER..];
    body(icmp);
    let checksum = icmpv6::checksum(&Icmpv6Packet::new(icmp).expect("holds ICMPv6"), &src, &dst);
    pnet_packet::icmpv6::MutableIcmpv6Packet::new(icmp)
        .expect("holds ICMPv6")
        .set_checksum(checksum);
    frame
}

#[cfg(test)]
mod tests {
    use super::*;
    use smoltcp::wire::{
        ArpOperation as SArpOp, ArpPacket, ArpRepr, EthernetFrame, Icmpv6Packet as SIcmp,
        Icmpv6Repr, Ipv6Packet, NdiscRepr,
    };

    const MAC: MacAddr = MacAddr([0x02, 0, 0, 0, 0x21, 0x03]);

    /// The IPv6 header and ICMPv6 message of a neighbour discovery frame,
    /// its hop limit (255) and checksum verified.
    fn parse_ndisc(frame: &[u8]) -> (smoltcp::wire::Ipv6Repr, Icmpv6Repr<'_>) {
        let eth = EthernetFrame::new_checked(frame).unwrap();
        let ip6 = Ipv6Packet::new_checked(eth.payload()).unwrap();
        assert_eq!(ip6.hop_limit(), 255);
        let header = smoltcp::wire::Ipv6Repr::parse(&ip6).unwrap();
        let icmp = SIcmp::new_checked(ip6.payload()).unwrap();
        let repr = Icmpv6Repr::parse(
            &ip6.src_addr(),
            &ip6.dst_addr(),
            &icmp,
            &smoltcp::phy::ChecksumCapabilities::default(),
        )
        .expect("checksum verifies");
        (header, repr)
    }

    #[test]
    fn gratuitous_arp_parses_as_request_for_itself() {
        let ip = Ipv4Addr::new(10, 213, 0, 20);
        let frame = gratuitous_arp(MAC, ip);
        assert_eq!(frame.len(), 60);
        let eth = EthernetFrame::new_checked(&frame[..]).unwrap();
        assert!(eth.dst_addr().is_broadcast());
        let repr = ArpRepr::parse(&ArpPacket::new_checked(eth.payload()).unwrap()).unwrap();
        match repr {
            ArpRepr::EthernetIpv4 {
                operation,
                source_hardware_addr,
                source_protocol_addr,
                target_protocol_addr,
                ..
            } => {
                assert_eq!(operation, SArpOp::Request);
                assert_eq!(source_hardware_addr.0, MAC.0);
                assert_eq!(source_protocol_addr, ip);
                assert_eq!(target_protocol_addr, ip);
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn arp_request_asks_for_the_target() {
        let (me, gw) = (Ipv4Addr::new(10, 213, 0, 20), Ipv4Addr::new(10, 213, 0, 1));
        let frame = arp_request(MAC, me, gw);
        let eth = EthernetFrame::new_checked(&frame[..]).unwrap();
        assert!(eth.dst_addr().is_broadcast());
        let repr = ArpRepr::parse(&ArpPacket::new_checked(eth.payload()).unwrap()).unwrap();
        let ArpRepr::EthernetIpv4 {
            operation,
            source_protocol_addr,
            target_protocol_addr,
            ..
        } = repr
        else {
            panic!("unexpected {repr:?}");
        };
        assert_eq!(operation, SArpOp::Request);
        assert_eq!((source_protocol_addr, target_protocol_addr), (me, gw));
    }

    #[test]
    fn neighbor_solicitation_goes_to_the_solicited_node_group() {
        let me: Ipv6Addr = "fd00:213::20".parse().unwrap();
        let gw: Ipv6Addr = "fd00:213::1:2:3".parse().unwrap();
        let frame = neighbor_solicitation(MAC, me, gw);
        let eth = EthernetFrame::new_checked(&frame[..]).unwrap();
        assert_eq!(
            eth.dst_addr().as_bytes(),
            &[0x33, 0x33, 0xff, 0x02, 0x00, 0x03]
        );
        let (ip6, repr) = parse_ndisc(&frame);
        assert_eq!(ip6.dst_addr, "ff02::1:ff02:3".parse::<Ipv6Addr>().unwrap());
        match repr {
            Icmpv6Repr::Ndisc(NdiscRepr::NeighborSolicit {
                target_addr,
                lladdr,
            }) => {
                assert_eq!(target_addr, gw);
                assert_eq!(lladdr.unwrap().as_bytes(), &MAC.0);
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn rarp_matches_qemu_self_announce() {
        let frame = rarp(MAC);
        assert_eq!(frame.len(), 60);
        assert_eq!(&frame[12..14], &[0x80, 0x35]);
        assert_eq!(&frame[20..22], &[0, 3]);
        assert_eq!(&frame[22..28], &MAC.0);
        assert_eq!(&frame[32..38], &MAC.0);
    }

    #[test]
    fn unsolicited_na_checksums_and_overrides() {
        let ip: Ipv6Addr = "fd00:213::20".parse().unwrap();
        let frame = unsolicited_na(MAC, ip);
        let (_, repr) = parse_ndisc(&frame);
        match repr {
            Icmpv6Repr::Ndisc(NdiscRepr::NeighborAdvert {
                flags,
                target_addr,
                lladdr,
            }) => {
                assert!(flags.contains(smoltcp::wire::NdiscNeighborFlags::OVERRIDE));
                assert_eq!(target_addr, ip);
                assert_eq!(lladdr.unwrap().as_bytes(), &MAC.0);
            }
            other => panic!("unexpected {other:?}"),
        }
    }
}
