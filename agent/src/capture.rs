//! What the peer sees: announce frames captured on a lab namespace's link.
//!
//! A raw AF_PACKET socket in the peer namespace records gratuitous ARPs,
//! unsolicited neighbour advertisements and RARPs with their arrival
//! times, so tests and `vfailover lab` can show when and whether the
//! guest announced itself after a migration.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

const ETH_P_ALL: u16 = 0x0003;
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
        mac: [u8; 6],
        ip: Ipv4Addr,
    },
    /// A neighbour advertisement nobody asked for (solicited flag clear).
    UnsolicitedNa {
        mac: [u8; 6],
        ip: Ipv6Addr,
    },
    Rarp {
        mac: [u8; 6],
    },
}

/// Parse `frame` as an announce frame, if it is one.
pub fn parse(frame: &[u8]) -> Option<Announce> {
    let ethertype = u16::from_be_bytes(frame.get(12..14)?.try_into().ok()?);
    let mac: [u8; 6] = frame.get(6..12)?.try_into().ok()?;
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
    attach_no_ipv4_filter(&socket)?;
    let deadline = Instant::now() + duration;
    let mut seen = Vec::new();
    let mut buf = [0u8; 2048];
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        if stop.load(Ordering::Acquire) {
            break;
        }
        set_timeout(&socket, left.clamp(Duration::from_millis(1), STOP_POLL))?;
        // SAFETY: `buf` is valid for `buf.len()` bytes for the whole call.
        let n = unsafe { libc::recv(socket.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            let err = std::io::Error::last_os_error();
            match err.kind() {
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted => continue,
                _ => return Err(err).context("capturing announce frames"),
            }
        }
        if let Some(announce) = parse(&buf[..n as usize]) {
            seen.push((Instant::now(), announce));
        }
    }
    Ok(seen)
}

fn open(ifname: &str) -> Result<OwnedFd> {
    let protocol = ETH_P_ALL.to_be();
    // SAFETY: plain socket(2) call; the result is checked below.
    let fd = unsafe {
        libc::socket(
            libc::AF_PACKET,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            protocol.into(),
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error()).context("opening an AF_PACKET socket");
    }
    // SAFETY: `fd` was just returned by socket(2) and is owned by nobody else.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    let ifindex = nix::net::if_::if_nametoindex(ifname)
        .with_context(|| format!("no interface {ifname} here"))?;
    // SAFETY: sockaddr_ll is plain data; all-zero is a valid starting value.
    let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    addr.sll_family = libc::AF_PACKET as u16;
    addr.sll_protocol = protocol;
    addr.sll_ifindex = ifindex as i32;
    // SAFETY: `addr` is a valid sockaddr_ll and the length matches it.
    let rc = unsafe {
        libc::bind(
            socket.as_raw_fd(),
            (&addr as *const libc::sockaddr_ll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as u32,
        )
    };
    if rc < 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("binding to {ifname}"));
    }
    Ok(socket)
}

/// A classic BPF program: drop IPv4 (ethertype 0x0800), keep the rest.
fn attach_no_ipv4_filter(socket: &OwnedFd) -> Result<()> {
    const ETHERTYPE_IPV4: u32 = 0x0800;
    let mut code = [
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
            k: ETHERTYPE_IPV4,
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
    let program = libc::sock_fprog {
        len: code.len() as u16,
        filter: code.as_mut_ptr(),
    };
    // SAFETY: `program` points at `code`, both alive for the call; the
    // kernel copies the program.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_ATTACH_FILTER,
            (&program as *const libc::sock_fprog).cast(),
            std::mem::size_of::<libc::sock_fprog>() as u32,
        )
    };
    if rc < 0 {
        return Err(std::io::Error::last_os_error()).context("attaching the capture filter");
    }
    Ok(())
}

fn set_timeout(socket: &OwnedFd, timeout: Duration) -> Result<()> {
    let tv = libc::timeval {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_usec: timeout.subsec_micros() as libc::suseconds_t,
    };
    // SAFETY: `tv` is a valid timeval and the length matches it.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&tv as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as u32,
        )
    };
    if rc < 0 {
        return Err(std::io::Error::last_os_error()).context("setting SO_RCVTIMEO");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use vfailover_netstack::wire::announce;

    const MAC: [u8; 6] = [2, 0, 0, 0, 0, 0x20];

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
