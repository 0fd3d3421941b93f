//! What the peer sees: announce frames captured on a lab namespace's link.
//!
//! A raw AF_PACKET socket in the peer namespace records gratuitous ARPs,
//! unsolicited neighbour advertisements and RARPs with their arrival
//! times, so tests and `vfailover lab` can show when and whether the
//! guest announced itself after a migration.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use vfailover_netstack::mac::MacAddr;
use vfailover_netstack::sys::packet;

const ETHERTYPE_ARP: u16 = 0x0806;
const ETHERTYPE_RARP: u16 = 0x8035;
const ETHERTYPE_IPV6: u16 = 0x86dd;
const ICMPV6: u8 = 58;
const NEIGHBOR_ADVERT: u8 = 136;
/// How often [`capture_until`] looks at its stop flag.
const STOP_POLL: Duration = Duration::from_millis(50);

/// An announce frame, by what it announces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Announce {
    /// An ARP whose sender and target address are the same.
    GratuitousArp {
        mac: MacAddr,
        ip: Ipv4Addr,
    },
    /// A neighbour advertisement nobody asked for (solicited flag clear).
    UnsolicitedNa {
        mac: MacAddr,
        ip: Ipv6Addr,
    },
    Rarp {
        mac: MacAddr,
    },
}

/// Parse `frame` as an announce frame, if it is one.
pub fn parse(frame: &[u8]) -> Option<Announce> {
    let ethertype = u16::from_be_bytes(frame.get(12..14)?.try_into().ok()?);
    let mac = MacAddr::try_from(frame.get(6..12)?).ok()?;
    let payload = &frame[14..];
    match ethertype {
        ETHERTYPE_ARP => {
            let sender: [u8; 4] = payload.get(14..18)?.try_into().ok()?;
            let target: [u8; 4] = payload.get(24..28)?.try_into().ok()?;
            (sender == target).then_some(Announce::GratuitousArp {
                mac,
                ip: sender.into(),
            })
        }
        ETHERTYPE_RARP => Some(Announce::Rarp { mac }),
        ETHERTYPE_IPV6 => {
            let icmp = payload.get(40..)?;
            let is_na = *payload.get(6)? == ICMPV6 && *icmp.first()? == NEIGHBOR_ADVERT;
            // Flags: R S O in the top bits of byte 4; S (0x40) clear.
            let unsolicited = *icmp.get(4)? & 0x40 == 0;
            let target: [u8; 16] = icmp.get(8..24)?.try_into().ok()?;
            (is_na && unsolicited).then_some(Announce::UnsolicitedNa {
                mac,
                ip: target.into(),
            })
        }
        _ => None,
    }
}

/// Capture announce frames on `ifname` (in the calling thread's network
/// namespace) for `duration`; returns them with their arrival times.
pub fn capture(ifname: &str, duration: Duration) -> Result<Vec<(Instant, Announce)>> {
    capture_until(ifname, duration, &AtomicBool::new(false))
}

/// [`capture`], ending early once `stop` is set (checked every 50 ms).
/// IPv4 frames are filtered out in the kernel: a capture that runs under a
/// TCP stream would otherwise overflow its queue and drop the very
/// announce frames it is there to see (ARP, RARP and IPv6 are kept).
pub fn capture_until(
    ifname: &str,
    duration: Duration,
    stop: &AtomicBool,
) -> Result<Vec<(Instant, Announce)>> {
    let socket = open(ifname)?;
    packet::attach_filter(socket.as_fd(), &NO_IPV4).context("attaching the capture filter")?;
    let deadline = Instant::now() + duration;
    let mut seen = Vec::new();
    let mut buf = [0u8; 2048];
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        if stop.load(Ordering::Acquire) {
            break;
        }
        packet::set_recv_timeout(
            socket.as_fd(),
            left.clamp(Duration::from_millis(1), STOP_POLL),
        )
        .context("setting SO_RCVTIMEO")?;
        let n = match packet::recv(socket.as_fd(), &mut buf, 0) {
            Ok(n) => n,
            Err(e) => match e.kind() {
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted => continue,
                _ => return Err(e).context("capturing announce frames"),
            },
        };
        if let Some(announce) = parse(&buf[..n]) {
            seen.push((Instant::now(), announce));
        }
    }
    Ok(seen)
}

/// A raw AF_PACKET socket bound to `ifname` (in the calling thread's
/// namespace), for every protocol: to capture on, or to send frames from.
pub fn open(ifname: &str) -> Result<OwnedFd> {
    let socket = packet::open(packet::ETH_P_ALL, false).context("opening an AF_PACKET socket")?;
    let ifindex = nix::net::if_::if_nametoindex(ifname)
        .with_context(|| format!("no interface {ifname} here"))?;
    packet::bind(socket.as_fd(), ifindex, packet::ETH_P_ALL)
        .with_context(|| format!("binding to {ifname}"))?;
    Ok(socket)
}

/// A classic BPF program: drop IPv4 (ethertype 0x0800), keep the rest.
const NO_IPV4: [libc::sock_filter; 4] = [
    // ldh [12]: the ethertype
    libc::sock_filter {
        code: (libc::BPF_LD | libc::BPF_H | libc::BPF_ABS) as u16,
        jt: 0,
        jf: 0,
        k: 12,
    },
    // jeq #0x0800: next (drop) if IPv4, else skip one (keep)
    libc::sock_filter {
        code: (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16,
        jt: 0,
        jf: 1,
        k: 0x0800,
    },
    libc::sock_filter {
        code: (libc::BPF_RET | libc::BPF_K) as u16,
        jt: 0,
        jf: 0,
        k: 0,
    },
    libc::sock_filter {
        code: (libc::BPF_RET | libc::BPF_K) as u16,
        jt: 0,
        jf: 0,
        k: u32::MAX,
    },
];

#[cfg(test)]
mod tests {
    use super::*;
    use vfailover_netstack::wire::announce;

    const MAC: MacAddr = MacAddr([2, 0, 0, 0, 0, 0x20]);

    #[test]
    fn recognises_the_stacks_announce_frames() {
        let v4 = Ipv4Addr::new(10, 213, 0, 20);
        let v6: Ipv6Addr = "fd00:213::20".parse().unwrap();
        assert_eq!(
            parse(&announce::gratuitous_arp(MAC, v4)),
            Some(Announce::GratuitousArp { mac: MAC, ip: v4 })
        );
        assert_eq!(
            parse(&announce::unsolicited_na(MAC, v6)),
            Some(Announce::UnsolicitedNa { mac: MAC, ip: v6 })
        );
        assert_eq!(
            parse(&announce::rarp(MAC)),
            Some(Announce::Rarp { mac: MAC })
        );
    }

    #[test]
    fn ignores_other_and_short_frames() {
        assert_eq!(parse(&[]), None);
        assert_eq!(parse(&[0xff; 13]), None);
        let mut arp_request = announce::gratuitous_arp(MAC, Ipv4Addr::new(10, 0, 0, 1));
        arp_request[41] = 2; // target 10.0.0.2: an ordinary request
        assert_eq!(parse(&arp_request), None);
        let mut truncated = announce::unsolicited_na(MAC, Ipv6Addr::LOCALHOST);
        truncated.truncate(60);
        assert_eq!(parse(&truncated), None);
    }
}
