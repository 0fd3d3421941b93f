//! The few system calls the XDP link makes itself, each in a small typed
//! wrapper: interface ioctls (queue count, MTU), attaching a program through
//! a BPF link, and the AF_XDP wakeups.
//!
//! Everything here works on the calling thread's network namespace, which is
//! what a process running inside a guest namespace needs; sysfs would show
//! the namespace `/sys` was mounted in instead.

use std::ffi::CString;
use std::io;
use std::mem;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::ptr;

use libbpf_rs::libbpf_sys;

/// `ETHTOOL_GCHANNELS` from linux/ethtool.h (libc does not carry it).
const ETHTOOL_GCHANNELS: u32 = 0x3c;

/// struct ethtool_channels from linux/ethtool.h.
#[repr(C)]
#[derive(Default)]
struct EthtoolChannels {
    cmd: u32,
    max_rx: u32,
    max_tx: u32,
    max_other: u32,
    max_combined: u32,
    rx_count: u32,
    tx_count: u32,
    other_count: u32,
    combined_count: u32,
}

/// An `ifreq` naming `ifname`.
fn ifreq(ifname: &str) -> io::Result<libc::ifreq> {
    let bytes = ifname.as_bytes();
    if bytes.is_empty() || bytes.len() >= libc::IFNAMSIZ || bytes.contains(&0) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("invalid interface name {ifname:?}"),
        ));
    }
    // SAFETY: ifreq is plain old data (arrays, integers, a pointer in a
    // union); all-zero is a valid value for each.
    let mut req: libc::ifreq = unsafe { mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(bytes) {
        *dst = *src as libc::c_char;
    }
    Ok(req)
}

/// A socket to issue interface ioctls on, in this thread's netns. AF_UNIX:
/// any family serves for SIOCGIFMTU/SIOCETHTOOL, and the systemd unit does
/// not allow the agent kernel IP sockets.
fn ioctl_socket() -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2); the result is checked before it is owned.
    let fd = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Issue `request` with `req` (which names the interface) in and out.
fn if_ioctl(request: libc::c_ulong, req: &mut libc::ifreq) -> io::Result<()> {
    let sock = ioctl_socket()?;
    // SAFETY: `req` is a valid ifreq that outlives the call; the requests
    // used here (SIOCGIFMTU, SIOCETHTOOL) read and write only the ifreq and
    // the buffer its ifru_data points to, which the caller keeps alive.
    let ret = unsafe { libc::ioctl(sock.as_raw_fd(), request as _, req as *mut libc::ifreq) };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The number of RX queues in use (`rx` + `combined` channels), from
/// ETHTOOL_GCHANNELS. Fails with EOPNOTSUPP for drivers without channels.
pub(crate) fn rx_queue_count(ifname: &str) -> io::Result<u32> {
    let mut channels = EthtoolChannels {
        cmd: ETHTOOL_GCHANNELS,
        ..Default::default()
    };
    let mut req = ifreq(ifname)?;
    req.ifr_ifru.ifru_data = (&mut channels as *mut EthtoolChannels).cast();
    if_ioctl(libc::SIOCETHTOOL, &mut req)?;
    Ok(channels.rx_count + channels.combined_count)
}

/// The interface MTU (L3 payload size).
pub(crate) fn mtu(ifname: &str) -> io::Result<u32> {
    let mut req = ifreq(ifname)?;
    if_ioctl(libc::SIOCGIFMTU, &mut req)?;
    // SAFETY: SIOCGIFMTU succeeded, so the kernel wrote ifru_mtu.
    let mtu = unsafe { req.ifr_ifru.ifru_mtu };
    Ok(u32::try_from(mtu).unwrap_or(0))
}

/// Interface index of `ifname` in this thread's namespace.
pub(crate) fn ifindex(ifname: &str) -> io::Result<u32> {
    let name = CString::new(ifname).map_err(|_| io::ErrorKind::InvalidInput)?;
    // SAFETY: `name` is a valid NUL-terminated string for the whole call.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    if index == 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(index)
}

/// Attach the XDP program `prog` to `ifindex` through a BPF link, with the
/// mode in `xdp_flags` (XDP_FLAGS_DRV_MODE or XDP_FLAGS_SKB_MODE).
///
/// Unlike a netlink attach, the program stays only as long as the returned
/// fd: the kernel detaches it when the last reference closes, so a crashed
/// or killed agent leaves no program behind. The kernel also refuses (EBUSY)
/// to put a link where any program is already attached.
pub(crate) fn xdp_link_create(
    prog: BorrowedFd<'_>,
    ifindex: u32,
    xdp_flags: u32,
) -> io::Result<OwnedFd> {
    let opts = libbpf_sys::bpf_link_create_opts {
        sz: mem::size_of::<libbpf_sys::bpf_link_create_opts>() as _,
        flags: xdp_flags,
        ..Default::default()
    };
    let target = i32::try_from(ifindex).map_err(|_| io::ErrorKind::InvalidInput)?;
    // SAFETY: `opts` is a fully initialised, correctly sized options struct
    // that outlives the call; `prog` is a live program fd.
    let fd = unsafe {
        libbpf_sys::bpf_link_create(prog.as_raw_fd(), target, libbpf_sys::BPF_XDP, &opts)
    };
    if fd < 0 {
        // libbpf returns -errno.
        return Err(io::Error::from_raw_os_error(-fd));
    }
    // SAFETY: a non-negative return is a new link fd that only we hold.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// What is attached to `ifindex` (program ids per mode), via netlink.
pub(crate) fn xdp_query(ifindex: u32) -> io::Result<libbpf_sys::bpf_xdp_query_opts> {
    let mut opts = libbpf_sys::bpf_xdp_query_opts {
        sz: mem::size_of::<libbpf_sys::bpf_xdp_query_opts>() as _,
        ..Default::default()
    };
    let target = i32::try_from(ifindex).map_err(|_| io::ErrorKind::InvalidInput)?;
    // SAFETY: `opts` is a correctly sized options struct the call fills in;
    // it outlives the call.
    let ret = unsafe { libbpf_sys::bpf_xdp_query(target, 0, &mut opts) };
    if ret < 0 {
        return Err(io::Error::from_raw_os_error(-ret));
    }
    Ok(opts)
}

/// Whether an errno from a wakeup only means "busy, try again later".
fn transient(err: &io::Error) -> bool {
    matches!(
        err.raw_os_error(),
        Some(libc::EAGAIN) | Some(libc::EBUSY) | Some(libc::ENOBUFS) | Some(libc::EINTR)
    )
}

/// Tell the kernel there is work on the TX ring (`sendto` with no data).
///
/// Unlike xsk-rs's `TxQueue::wakeup`, ENETDOWN and ENXIO are returned: they
/// are how a down or vanished device shows up.
pub(crate) fn kick_tx(fd: RawFd) -> io::Result<()> {
    // SAFETY: a zero-length sendto with null buffers and address is the
    // documented AF_XDP TX wakeup; no memory is read.
    let ret = unsafe { libc::sendto(fd, ptr::null(), 0, libc::MSG_DONTWAIT, ptr::null(), 0) };
    check_kick(ret)
}

/// Tell the kernel the fill ring has frames again (`recvfrom` with no
/// buffer). Used instead of `poll`, which reports no error for an XSK
/// whose device has gone.
pub(crate) fn kick_rx(fd: RawFd) -> io::Result<()> {
    // SAFETY: a zero-length recvfrom with null buffer and address is the
    // AF_XDP RX wakeup; no memory is written.
    let ret = unsafe {
        libc::recvfrom(
            fd,
            ptr::null_mut(),
            0,
            libc::MSG_DONTWAIT,
            ptr::null_mut(),
            ptr::null_mut(),
        )
    };
    check_kick(ret)
}

fn check_kick(ret: isize) -> io::Result<()> {
    if ret < 0 {
        let err = io::Error::last_os_error();
        if !transient(&err) {
            return Err(err);
        }
    }
    Ok(())
}
