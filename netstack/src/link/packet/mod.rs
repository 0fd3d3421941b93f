//! AF_PACKET link: a raw packet socket on one interface, for a standby that
//! will not take an XDP program.
//!
//! AF_PACKET is a tap: the kernel keeps receiving every frame, and a classic
//! BPF socket filter ([`filter`]) decides which ones are also copied up to
//! us — only those addressed to the stack. The guest kernel goes on
//! answering for its own addresses on the same NIC.
//!
//! - Receive: `recvmmsg` in batches of up to [`RX_BATCH`] frames into
//!   buffers the link owns (one syscall per batch, one copy per frame).
//! - Send: one `send` per frame, built in place in a buffer the link owns;
//!   there is nothing to flush. `PACKET_QDISC_BYPASS` is asked for, so our
//!   frames skip the qdisc (and taps like tcpdump on this interface).
//! - Our own frames are not read back (`PACKET_IGNORE_OUTGOING`).
//! - Checksums: a frame from a sender with checksum offload (a host tap
//!   under virtio-net, a veth) can arrive with only the pseudo-header sum in
//!   its TCP/UDP checksum field. The kernel's stack never looks at it;
//!   smoltcp would drop the frame. `PACKET_VNET_HDR` puts a
//!   `virtio_net_hdr` before each frame that says so and where, and the link
//!   completes the checksum before handing the frame up.
//! - The device going away: the packet socket reports ENETDOWN once (as
//!   `POLLERR`, so an epoll loop hears it) when the device goes down *or* is
//!   deleted, and send fails with ENXIO once it is deleted. ENETDOWN is
//!   refined to Gone when the ifindex no longer exists. A Gone link stays
//!   gone: a new device is a new ifindex and needs a new link.
//!
//! Interface lookups (index, MTU, existence) are ioctls on the packet socket
//! itself, so they are answered in the socket's network namespace, not in
//! whatever namespace the calling thread or `/sys` mount is in.

mod filter;

use std::io;
use std::net::IpAddr;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};

use libc::{c_int, sock_filter};

use self::filter::{filter_program, MAX_INSNS};
use super::{Health, Link, LinkError, LinkMode};
use crate::sys::packet::{self, Received};
use crate::sys::{self, set_int_opt, IfName};

/// Frames taken per `recvmmsg`.
const RX_BATCH: usize = packet::MAX_BATCH;

/// `struct virtio_net_hdr` (PACKET_VNET_HDR): before every frame received,
/// and (all zeroes: no offload asked) before every frame sent.
const VNET_HDR_LEN: usize = 10;
/// `virtio_net_hdr.flags`: checksum to be completed at csum_start/offset.
const VIRTIO_NET_HDR_F_NEEDS_CSUM: u8 = 1;

/// Socket receive buffer asked for: the default (about 200 KiB) holds under
/// a hundred full-size frames, too few for a burst while the datapath sleeps.
const RCVBUF_BYTES: c_int = 4 << 20;

/// A packet socket bound to one interface, filtered to the stack's addresses.
pub struct PacketLink {
    fd: OwnedFd,
    ifname: String,
    ifindex: u32,
    max_frame_len: usize,
    health: Health,
    /// `RX_BATCH` slots, each a vnet header and up to `max_frame_len` bytes.
    rx_buf: Vec<u8>,
    /// A zero vnet header, then the frame being sent.
    tx_buf: Vec<u8>,
}

impl PacketLink {
    /// Open a packet socket on `ifname` (in the calling thread's network
    /// namespace) that receives only frames for `addresses`.
    ///
    /// No frame outside the filter is ever queued: the socket binds with a
    /// drop-all filter, is drained, and only then gets the real filter.
    pub fn open(ifname: &str, addresses: &[IpAddr]) -> Result<PacketLink, LinkError> {
        let program = checked_program(addresses)?;
        let name = IfName::new(ifname).map_err(LinkError::InvalidIfName)?;
        let io_err = |what| move |e| LinkError::from_io(ifname, what, e);

        // Protocol 0: the socket takes no frames at all until `bind`.
        let fd = packet::open(0, true).map_err(io_err("socket(AF_PACKET)"))?;
        let sock = fd.as_fd();
        let ifindex = sys::ifindex(sock, &name).map_err(io_err("SIOCGIFINDEX"))?;
        let mtu = sys::mtu(sock, &name).map_err(io_err("SIOCGIFMTU"))?;
        packet::attach_filter(sock, &filter_program(&[])).map_err(io_err("SO_ATTACH_FILTER"))?;
        set_int_opt(sock, libc::SOL_PACKET, libc::PACKET_IGNORE_OUTGOING, 1)
            .map_err(io_err("PACKET_IGNORE_OUTGOING"))?;
        set_int_opt(sock, libc::SOL_PACKET, libc::PACKET_VNET_HDR, 1)
            .map_err(io_err("PACKET_VNET_HDR"))?;
        if let Err(e) = set_int_opt(sock, libc::SOL_PACKET, libc::PACKET_QDISC_BYPASS, 1) {
            tracing::debug!(ifname, "PACKET_QDISC_BYPASS not available: {e}");
        }
        // SO_RCVBUFFORCE ignores rmem_max but needs CAP_NET_ADMIN.
        if set_int_opt(sock, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, RCVBUF_BYTES).is_err() {
            if let Err(e) = set_int_opt(sock, libc::SOL_SOCKET, libc::SO_RCVBUF, RCVBUF_BYTES) {
                tracing::debug!(ifname, "SO_RCVBUF: {e}");
            }
        }
        packet::bind(sock, ifindex, packet::ETH_P_ALL).map_err(io_err("bind"))?;
        drain(&fd);
        packet::attach_filter(sock, &program).map_err(io_err("SO_ATTACH_FILTER"))?;

        let max_frame_len = mtu as usize + 14;
        tracing::debug!(ifname, ifindex, max_frame_len, "packet link open");
        Ok(PacketLink {
            fd,
            ifname: ifname.to_owned(),
            ifindex,
            max_frame_len,
            health: Health::Up,
            rx_buf: vec![0; RX_BATCH * (VNET_HDR_LEN + max_frame_len)],
            tx_buf: vec![0; VNET_HDR_LEN + max_frame_len],
        })
    }

    /// What a failed send or receive means, recording the health it
    /// implies. `None` for a stale ENETDOWN: the socket reports a down event
    /// once, on whichever call comes next, even when the device is up again
    /// by then; the caller retries.
    fn classify(&mut self, what: &'static str, e: io::Error) -> Option<LinkError> {
        let mut err = LinkError::from_io(&self.ifname, what, e);
        // Deletion shows up as ENETDOWN too (the packet notifier handles
        // unregister like down): ask the kernel how the device is now.
        if matches!(err, LinkError::Down(_)) {
            match device_state(&self.fd, self.ifindex) {
                DeviceState::Up => return None,
                DeviceState::Gone => err = LinkError::Gone(self.ifname.clone()),
                DeviceState::Down | DeviceState::Unknown => {}
            }
        }
        if let Some(health) = err.health() {
            if self.health != health {
                tracing::info!(ifname = %self.ifname, ?health, "packet link: {err}");
            }
            self.health = health;
        }
        Some(err)
    }

    /// A Gone link's socket is unbound for good; don't make syscalls on it.
    fn check_gone(&self) -> Result<(), LinkError> {
        match self.health {
            Health::Gone => Err(LinkError::Gone(self.ifname.clone())),
            Health::Up | Health::Down => Ok(()),
        }
    }
}

impl Link for PacketLink {
    fn ifname(&self) -> &str {
        &self.ifname
    }

    fn ifindex(&self) -> u32 {
        self.ifindex
    }

    fn mode(&self) -> LinkMode {
        LinkMode::Packet
    }

    fn max_frame_len(&self) -> usize {
        self.max_frame_len
    }

    fn recv(&mut self, budget: usize, deliver: &mut dyn FnMut(&[u8])) -> Result<usize, LinkError> {
        self.check_gone()?;
        let slot = VNET_HDR_LEN + self.max_frame_len;
        let mut taken = 0;
        let mut delivered = 0;
        let mut frames = [Received::default(); RX_BATCH];
        let mut stale_retries = 1;
        while taken < budget {
            let want = (budget - taken).min(RX_BATCH);
            let got = match packet::recv_batch(
                self.fd.as_fd(),
                &mut self.rx_buf,
                slot,
                &mut frames[..want],
            ) {
                Ok(got) => got,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => match self.classify("recvmmsg", e) {
                    None if stale_retries > 0 => {
                        stale_retries -= 1;
                        continue;
                    }
                    None => break,
                    Some(err) => return Err(err),
                },
            };
            for (i, frame) in frames[..got].iter().enumerate() {
                if frame.truncated {
                    // Bigger than MTU + header: a GRO/LRO aggregate, which
                    // the stack could not take anyway.
                    tracing::debug!(
                        ifname = %self.ifname,
                        "dropped a frame over {} bytes",
                        self.max_frame_len
                    );
                    continue;
                }
                let message = &mut self.rx_buf[i * slot..i * slot + frame.len];
                let Some((hdr, frame)) = message.split_first_chunk_mut::<VNET_HDR_LEN>() else {
                    continue;
                };
                complete_checksum(hdr, frame);
                deliver(frame);
                delivered += 1;
            }
            taken += got;
            if got < want {
                break;
            }
        }
        if delivered > 0 {
            // Frames arrived, so the device is up and has carrier.
            self.health = Health::Up;
        }
        Ok(delivered)
    }

    fn send(&mut self, len: usize, fill: &mut dyn FnMut(&mut [u8])) -> Result<bool, LinkError> {
        self.check_gone()?;
        if len > self.max_frame_len {
            return Err(LinkError::TooLong {
                len,
                max: self.max_frame_len,
            });
        }
        fill(&mut self.tx_buf[VNET_HDR_LEN..VNET_HDR_LEN + len]);
        let mut stale_retries = 1;
        loop {
            match packet::send(self.fd.as_fd(), &self.tx_buf[..VNET_HDR_LEN + len]) {
                // Not news that the device is healthy: a send on a device
                // without carrier succeeds too (the frame is dropped).
                Ok(()) => return Ok(true),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                // Socket buffer or (with qdisc bypass) driver queue full.
                Err(e)
                    if e.kind() == io::ErrorKind::WouldBlock
                        || e.raw_os_error() == Some(libc::ENOBUFS) =>
                {
                    return Ok(false)
                }
                Err(e) => match self.classify("send", e) {
                    None if stale_retries > 0 => stale_retries -= 1,
                    None => return Ok(false),
                    Some(err) => return Err(err),
                },
            }
        }
    }

    fn flush(&mut self) -> Result<(), LinkError> {
        self.check_gone()
    }

    fn fds(&self) -> Vec<RawFd> {
        vec![self.fd.as_raw_fd()]
    }

    fn set_addresses(&mut self, addrs: &[IpAddr]) -> Result<(), LinkError> {
        let program = checked_program(addrs)?;
        // SO_ATTACH_FILTER swaps the program atomically: no frame is judged
        // by neither or a mix of the two.
        packet::attach_filter(self.fd.as_fd(), &program)
            .map_err(|e| LinkError::from_io(&self.ifname, "SO_ATTACH_FILTER", e))
    }

    fn health(&self) -> Health {
        self.health
    }

    fn set_health(&mut self, health: Health) {
        self.health = health;
    }
}

fn checked_program(addrs: &[IpAddr]) -> Result<Vec<sock_filter>, LinkError> {
    let program = filter_program(addrs);
    if program.len() > MAX_INSNS {
        return Err(LinkError::FilterTooLong {
            addresses: addrs.len(),
            insns: program.len(),
            max: MAX_INSNS,
        });
    }
    Ok(program)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DeviceState {
    Up,
    Down,
    Gone,
    /// The kernel did not say.
    Unknown,
}

/// How the interface with `ifindex` is now: looked up by index, since its
/// name may have changed since the link was opened.
fn device_state(fd: &OwnedFd, ifindex: u32) -> DeviceState {
    match sys::is_up(fd.as_fd(), ifindex) {
        Ok(true) => DeviceState::Up,
        Ok(false) => DeviceState::Down,
        Err(e) if e.raw_os_error() == Some(libc::ENODEV) => DeviceState::Gone,
        Err(_) => DeviceState::Unknown,
    }
}

/// Throw away whatever was queued before the real filter was attached.
fn drain(fd: &OwnedFd) {
    let mut byte = [0u8; 1];
    // Bounded: frames keep arriving only if the drop-all filter failed.
    for _ in 0..4096 {
        if packet::recv(fd.as_fd(), &mut byte, libc::MSG_DONTWAIT | libc::MSG_TRUNC).is_err() {
            break;
        }
    }
}

/// Finish a checksum the sender left to offload, as `hdr` describes: the
/// field holds the pseudo-header sum; the ones' complement sum from
/// `csum_start` to the end, inverted, is the checksum.
fn complete_checksum(hdr: &[u8; VNET_HDR_LEN], frame: &mut [u8]) {
    if hdr[0] & VIRTIO_NET_HDR_F_NEEDS_CSUM == 0 {
        return;
    }
    // Host byte order: the kernel writes the header for a little-endian
    // (modern) virtio device, i.e. native order on the machines we run on.
    let start = usize::from(u16::from_ne_bytes([hdr[6], hdr[7]]));
    let field = start + usize::from(u16::from_ne_bytes([hdr[8], hdr[9]]));
    if field + 2 > frame.len() {
        return;
    }
    let mut sum: u32 = frame[start..]
        .chunks(2)
        .map(|w| u32::from(u16::from_be_bytes([w[0], *w.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    // 0 and 0xffff are the same in ones' complement, but a UDP checksum of
    // 0 means "none".
    let csum = match !(sum as u16) {
        0 => 0xffff,
        c => c,
    };
    frame[field..field + 2].copy_from_slice(&csum.to_be_bytes());
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    // These fail before any syscall, so they need no root.

    #[test]
    fn bad_interface_names_are_setup_errors() {
        for name in ["", "a-name-far-too-long", "nul\0inside"] {
            match PacketLink::open(name, &[]) {
                Err(e @ LinkError::InvalidIfName(_)) => {
                    assert!(e.to_string().contains("interface name"), "{e}")
                }
                other => panic!("{name:?}: {:?}", other.map(|l| l.ifname().to_owned())),
            }
        }
        assert!(IfName::new("exactly15chars_").is_ok());
    }

    /// A UDP/IPv4 frame as a checksum-offloading sender leaves it, and the
    /// vnet header the kernel reports with it.
    fn partial_udp() -> ([u8; VNET_HDR_LEN], Vec<u8>, u16) {
        let mut f = vec![0u8; 14];
        f[12..14].copy_from_slice(&[0x08, 0x00]);
        f.extend([
            0x45, 0, 0, 33, 0, 0, 0x40, 0, 64, 17, 0, 0, 10, 9, 0, 1, 10, 9, 0, 2,
        ]);
        f.extend([0x83, 0xaa, 0, 9, 0, 13, 0, 0]);
        f.extend(b"hello");
        // The pseudo-header sum (addresses, protocol, UDP length), not inverted.
        let pseudo: u32 = [0x0a09, 0x0001, 0x0a09, 0x0002, 17, 13].iter().sum();
        f[40..42].copy_from_slice(&(pseudo as u16).to_be_bytes());
        let mut hdr = [0; VNET_HDR_LEN];
        hdr[0] = VIRTIO_NET_HDR_F_NEEDS_CSUM;
        hdr[6..8].copy_from_slice(&34u16.to_ne_bytes());
        hdr[8..10].copy_from_slice(&6u16.to_ne_bytes());
        // The same datagram's checksum as tcpdump computes it.
        (hdr, f, 0x243a)
    }

    #[test]
    fn partial_checksums_are_completed() {
        let (hdr, mut frame, want) = partial_udp();
        complete_checksum(&hdr, &mut frame);
        assert_eq!(u16::from_be_bytes([frame[40], frame[41]]), want);
    }

    #[test]
    fn complete_or_odd_frames_are_left_alone() {
        let (mut hdr, frame, _) = partial_udp();
        let mut copy = frame.clone();
        hdr[0] = 0;
        complete_checksum(&hdr, &mut copy);
        assert_eq!(copy, frame);
        // Offsets pointing past the end: untouched, no panic.
        hdr[0] = VIRTIO_NET_HDR_F_NEEDS_CSUM;
        hdr[6..8].copy_from_slice(&40u16.to_ne_bytes());
        hdr[8..10].copy_from_slice(&200u16.to_ne_bytes());
        complete_checksum(&hdr, &mut copy);
        assert_eq!(copy, frame);
    }

    #[test]
    fn too_many_addresses_are_a_setup_error() {
        let addrs: Vec<IpAddr> = (0..2000u32).map(|i| Ipv4Addr::from(i).into()).collect();
        match PacketLink::open("eth0", &addrs) {
            Err(e @ LinkError::FilterTooLong { .. }) => {
                assert!(e.to_string().contains("2000 addresses"), "{e}")
            }
            other => panic!("{:?}", other.map(|l| l.ifname().to_owned())),
        }
    }
}
