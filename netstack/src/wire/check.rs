//! Sanity checks on received frames.
//!
//! smoltcp drops malformed frames silently; we check the headers it would
//! parse first so a drop is counted and visible in the stats.

use smoltcp::wire::{ArpPacket, EthernetFrame, EthernetProtocol, Ipv4Packet, Ipv6Packet};

/// Why a frame was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Malformed {
    /// Shorter than an Ethernet header.
    Ethernet,
    /// IPv4 header or total length inconsistent with the frame.
    Ipv4,
    /// IPv6 header or payload length inconsistent with the frame.
    Ipv6,
    /// ARP packet shorter than its declared addresses.
    Arp,
}

/// Check the Ethernet header and the network header of the protocols the
/// stack speaks; other EtherTypes pass (smoltcp ignores them).
pub fn check_frame(frame: &[u8]) -> Result<(), Malformed> {
    let eth = EthernetFrame::new_checked(frame).map_err(|_| Malformed::Ethernet)?;
    let payload = eth.payload();
    match eth.ethertype() {
        EthernetProtocol::Ipv4 => {
            let ip = Ipv4Packet::new_checked(payload).map_err(|_| Malformed::Ipv4)?;
            if ip.version() != 4 {
                return Err(Malformed::Ipv4);
            }
        }
        EthernetProtocol::Ipv6 => {
            let ip = Ipv6Packet::new_checked(payload).map_err(|_| Malformed::Ipv6)?;
            if ip.version() != 6 {
                return Err(Malformed::Ipv6);
            }
        }
        EthernetProtocol::Arp => {
            ArpPacket::new_checked(payload).map_err(|_| Malformed::Arp)?;
        }
        _ => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eth(ethertype: u16, payload: &[u8]) -> Vec<u8> {
        let mut f = vec![0xff; 12];
        f.extend_from_slice(&ethertype.to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    #[test]
    fn short_ethernet_is_malformed() {
        assert_eq!(check_frame(&[0; 13]), Err(Malformed::Ethernet));
        assert_eq!(check_frame(&[]), Err(Malformed::Ethernet));
    }

    #[test]
    fn ipv4_total_length_beyond_frame_is_malformed() {
        let mut ip = [0u8; 20];
        ip[0] = 0x45;
        ip[2..4].copy_from_slice(&60u16.to_be_bytes());
        assert_eq!(check_frame(&eth(0x0800, &ip)), Err(Malformed::Ipv4));
        ip[2..4].copy_from_slice(&20u16.to_be_bytes());
        assert_eq!(check_frame(&eth(0x0800, &ip)), Ok(()));
        ip[0] = 0x65;
        assert_eq!(check_frame(&eth(0x0800, &ip)), Err(Malformed::Ipv4));
    }

    #[test]
    fn truncated_ipv6_and_arp_are_malformed() {
        assert_eq!(check_frame(&eth(0x86dd, &[0x60; 39])), Err(Malformed::Ipv6));
        assert_eq!(check_frame(&eth(0x0806, &[0; 7])), Err(Malformed::Arp));
    }

    #[test]
    fn unknown_ethertype_passes() {
        assert_eq!(check_frame(&eth(0x88cc, &[1, 2, 3])), Ok(()));
    }
}
