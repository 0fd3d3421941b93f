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

use std::ffi::CString;
use std::io;
use std::mem;
use std::net::IpAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use libc::{c_int, c_void, sock_filter};

use self::filter::{filter_program, MAX_INSNS};
use super::{Health, Link, LinkError, LinkMode};

/// Frames taken per `recvmmsg`.
const RX_BATCH: usize = 32;

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
        let name = ifreq_name(ifname)?;
        let io_err = |what| move |e| LinkError::from_io(ifname, what, e);

        // Protocol 0: the socket takes no frames at all until `bind`.
        let fd = packet_socket().map_err(io_err("socket(AF_PACKET)"))?;
        let ifindex = ifindex(&fd, &name).map_err(io_err("SIOCGIFINDEX"))?;
        let mtu = mtu(&fd, &name).map_err(io_err("SIOCGIFMTU"))?;
        attach_filter(&fd, &filter_program(&[])).map_err(io_err("SO_ATTACH_FILTER"))?;
        set_int_opt(&fd, libc::SOL_PACKET, libc::PACKET_IGNORE_OUTGOING, 1)
            .map_err(io_err("PACKET_IGNORE_OUTGOING"))?;
        set_int_opt(&fd, libc::SOL_PACKET, libc::PACKET_VNET_HDR, 1)
            .map_err(io_err("PACKET_VNET_HDR"))?;
        if let Err(e) = set_int_opt(&fd, libc::SOL_PACKET, libc::PACKET_QDISC_BYPASS, 1) {
            tracing::debug!(ifname, "PACKET_QDISC_BYPASS not available: {e}");
        }
        // SO_RCVBUFFORCE ignores rmem_max but needs CAP_NET_ADMIN.
        if set_int_opt(&fd, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, RCVBUF_BYTES).is_err() {
            if let Err(e) = set_int_opt(&fd, libc::SOL_SOCKET, libc::SO_RCVBUF, RCVBUF_BYTES) {
                tracing::debug!(ifname, "SO_RCVBUF: {e}");
            }
        }
        bind(&fd, ifindex).map_err(io_err("bind"))?;
        drain(&fd);
        attach_filter(&fd, &program).map_err(io_err("SO_ATTACH_FILTER"))?;

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
            let got = match recv_batch(&self.fd, &mut self.rx_buf, slot, &mut frames[..want]) {
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
            match send_frame(&self.fd, &self.tx_buf[..VNET_HDR_LEN + len]) {
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
        attach_filter(&self.fd, &program)
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
        return Err(LinkError::Setup(format!(
            "{} addresses need a socket filter of {} instructions; the kernel takes at most {MAX_INSNS}",
            addrs.len(),
            program.len()
        )));
    }
    Ok(program)
}

/// `ifname` as the kernel's NUL-terminated `IFNAMSIZ` array.
fn ifreq_name(ifname: &str) -> Result<[libc::c_char; libc::IFNAMSIZ], LinkError> {
    let bad = || LinkError::Setup(format!("{ifname:?} is not a valid interface name"));
    let c = CString::new(ifname).map_err(|_| bad())?;
    let bytes = c.as_bytes_with_nul();
    if bytes.len() > libc::IFNAMSIZ || ifname.is_empty() {
        return Err(bad());
    }
    let mut name = [0; libc::IFNAMSIZ];
    for (dst, &src) in name.iter_mut().zip(bytes) {
        *dst = src as libc::c_char;
    }
    Ok(name)
}

fn cvt(ret: c_int) -> io::Result<c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

fn packet_socket() -> io::Result<OwnedFd> {
    // SAFETY: plain syscall with constant arguments.
    let fd = cvt(unsafe {
        libc::socket(
            libc::AF_PACKET,
            libc::SOCK_RAW | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    })?;
    // SAFETY: `fd` was just returned by socket() and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn set_int_opt(fd: &OwnedFd, level: c_int, name: c_int, value: c_int) -> io::Result<()> {
    // SAFETY: the option value is a live c_int and its exact size is passed.
    cvt(unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (&value as *const c_int).cast::<c_void>(),
            mem::size_of::<c_int>() as libc::socklen_t,
        )
    })
    .map(drop)
}

fn attach_filter(fd: &OwnedFd, program: &[sock_filter]) -> io::Result<()> {
    let fprog = libc::sock_fprog {
        // The caller bounds the length to MAX_INSNS.
        len: program.len() as u16,
        // The kernel only reads through this pointer.
        filter: program.as_ptr().cast_mut(),
    };
    // SAFETY: `fprog` points at `program`, which outlives the call; the
    // kernel copies the program before returning.
    cvt(unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_ATTACH_FILTER,
            (&fprog as *const libc::sock_fprog).cast::<c_void>(),
            mem::size_of::<libc::sock_fprog>() as libc::socklen_t,
        )
    })
    .map(drop)
}

/// Issue an interface ioctl on `fd` (answered in the socket's namespace).
fn ifreq_ioctl(fd: &OwnedFd, request: libc::c_ulong, ifr: &mut libc::ifreq) -> io::Result<()> {
    // SAFETY: the SIOCGIF* requests used here read and write only within
    // the `ifreq` we hand over.
    cvt(unsafe { libc::ioctl(fd.as_raw_fd(), request, ifr as *mut libc::ifreq) }).map(drop)
}

fn new_ifreq(name: [libc::c_char; libc::IFNAMSIZ]) -> libc::ifreq {
    // SAFETY: `ifreq` is plain old data (a name and a union of integers,
    // addresses and a pointer); all zeroes is a valid value of it.
    let mut ifr: libc::ifreq = unsafe { mem::zeroed() };
    ifr.ifr_name = name;
    ifr
}

fn ifindex(fd: &OwnedFd, name: &[libc::c_char; libc::IFNAMSIZ]) -> io::Result<u32> {
    let mut ifr = new_ifreq(*name);
    ifreq_ioctl(fd, libc::SIOCGIFINDEX, &mut ifr)?;
    // SAFETY: SIOCGIFINDEX succeeded, so it filled in the index member.
    Ok(unsafe { ifr.ifr_ifru.ifru_ifindex } as u32)
}

fn mtu(fd: &OwnedFd, name: &[libc::c_char; libc::IFNAMSIZ]) -> io::Result<u32> {
    let mut ifr = new_ifreq(*name);
    ifreq_ioctl(fd, libc::SIOCGIFMTU, &mut ifr)?;
    // SAFETY: SIOCGIFMTU succeeded, so it filled in the MTU member.
    Ok(unsafe { ifr.ifr_ifru.ifru_mtu } as u32)
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
    let from_err = |e: io::Error| match e.raw_os_error() {
        Some(libc::ENODEV) => DeviceState::Gone,
        _ => DeviceState::Unknown,
    };
    let mut ifr = new_ifreq([0; libc::IFNAMSIZ]);
    ifr.ifr_ifru.ifru_ifindex = ifindex as c_int;
    if let Err(e) = ifreq_ioctl(fd, libc::SIOCGIFNAME, &mut ifr) {
        return from_err(e);
    }
    // SIOCGIFNAME filled in the name, which SIOCGIFFLAGS looks up.
    if let Err(e) = ifreq_ioctl(fd, libc::SIOCGIFFLAGS, &mut ifr) {
        return from_err(e);
    }
    // SAFETY: SIOCGIFFLAGS succeeded, so it filled in the flags member.
    let flags = c_int::from(unsafe { ifr.ifr_ifru.ifru_flags });
    if flags & libc::IFF_UP != 0 {
        DeviceState::Up
    } else {
        DeviceState::Down
    }
}

fn bind(fd: &OwnedFd, ifindex: u32) -> io::Result<()> {
    // SAFETY: `sockaddr_ll` is plain old data; all zeroes is valid.
    let mut addr: libc::sockaddr_ll = unsafe { mem::zeroed() };
    addr.sll_family = libc::AF_PACKET as u16;
    addr.sll_protocol = (libc::ETH_P_ALL as u16).to_be();
    addr.sll_ifindex = ifindex as c_int;
    // SAFETY: `addr` is a live sockaddr_ll and its exact size is passed.
    cvt(unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&addr as *const libc::sockaddr_ll).cast::<libc::sockaddr>(),
            mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    })
    .map(drop)
}

/// Throw away whatever was queued before the real filter was attached.
fn drain(fd: &OwnedFd) {
    let mut byte = [0u8; 1];
    // Bounded: frames keep arriving only if the drop-all filter failed.
    for _ in 0..4096 {
        // SAFETY: receives at most one byte into `byte`.
        let n = unsafe {
            libc::recv(
                fd.as_raw_fd(),
                byte.as_mut_ptr().cast::<c_void>(),
                byte.len(),
                libc::MSG_DONTWAIT | libc::MSG_TRUNC,
            )
        };
        if n < 0 {
            break;
        }
    }
}

fn send_frame(fd: &OwnedFd, frame: &[u8]) -> io::Result<()> {
    // SAFETY: the kernel reads `frame.len()` bytes from `frame`.
    let n = unsafe {
        libc::send(
            fd.as_raw_fd(),
            frame.as_ptr().cast::<c_void>(),
            frame.len(),
            libc::MSG_DONTWAIT,
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
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

/// One received message: its length and whether it did not fit its slot.
#[derive(Debug, Clone, Copy, Default)]
struct Received {
    len: usize,
    truncated: bool,
}

/// One `recvmmsg` of up to `frames.len()` messages, the i-th into the i-th
/// `slot`-byte slot of `buf`. Returns how many arrived.
fn recv_batch(
    fd: &OwnedFd,
    buf: &mut [u8],
    slot: usize,
    frames: &mut [Received],
) -> io::Result<usize> {
    let mut iovs: [libc::iovec; RX_BATCH] = std::array::from_fn(|_| libc::iovec {
        iov_base: std::ptr::null_mut(),
        iov_len: 0,
    });
    // SAFETY: `mmsghdr` is plain old data; all zeroes is an empty message.
    let mut msgs: [libc::mmsghdr; RX_BATCH] = unsafe { mem::zeroed() };
    let n = frames.len().min(RX_BATCH).min(buf.len() / slot);
    for ((iov, msg), chunk) in iovs
        .iter_mut()
        .zip(&mut msgs)
        .zip(buf.chunks_exact_mut(slot))
    {
        *iov = libc::iovec {
            iov_base: chunk.as_mut_ptr().cast::<c_void>(),
            iov_len: slot,
        };
        msg.msg_hdr.msg_iov = iov;
        msg.msg_hdr.msg_iovlen = 1;
    }
    // SAFETY: the first `n` messages each point at one iovec covering a
    // distinct `slot`-byte chunk of `buf`, all alive for the call; a null
    // timeout is allowed.
    let got = cvt(unsafe {
        libc::recvmmsg(
            fd.as_raw_fd(),
            msgs.as_mut_ptr(),
            n as libc::c_uint,
            libc::MSG_DONTWAIT,
            std::ptr::null_mut(),
        )
    })? as usize;
    for (frame, msg) in frames.iter_mut().zip(&msgs[..got]) {
        *frame = Received {
            len: msg.msg_len as usize,
            truncated: msg.msg_hdr.msg_flags & libc::MSG_TRUNC != 0,
        };
    }
    Ok(got)
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
                Err(LinkError::Setup(msg)) => assert!(msg.contains("interface name"), "{msg}"),
                other => panic!("{name:?}: {:?}", other.map(|l| l.ifname().to_owned())),
            }
        }
        assert!(ifreq_name("exactly15chars_").is_ok());
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
            Err(LinkError::Setup(msg)) => assert!(msg.contains("2000 addresses"), "{msg}"),
            other => panic!("{:?}", other.map(|l| l.ifname().to_owned())),
        }
    }
}
