//! Every system call netstack makes itself, each behind a safe wrapper:
//! the only module of the crate allowed `unsafe` (apart from the xsk-rs
//! ring and UMEM calls in `xdp::xsk`, see there).
//!
//! Interface lookups take the socket to ask on: a packet socket answers in
//! its own network namespace, [`ioctl_socket`] in the calling thread's.

pub mod packet;
pub(crate) mod xdp;

use std::io;
use std::mem;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use libc::c_int;

/// A syscall's `-1 and errno` as an `io::Error`.
fn cvt(ret: c_int) -> io::Result<c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// `socket(2)`, owned from the start.
fn socket(domain: c_int, ty: c_int, protocol: c_int) -> io::Result<OwnedFd> {
    // SAFETY: plain syscall with integer arguments; the result is checked.
    let fd = cvt(unsafe { libc::socket(domain, ty, protocol) })?;
    // SAFETY: `fd` was just returned by socket(2) and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// A socket to issue interface ioctls on, in this thread's netns. AF_UNIX:
/// any family serves for SIOCGIFMTU/SIOCETHTOOL, and the systemd unit does
/// not allow the agent kernel IP sockets.
pub(crate) fn ioctl_socket() -> io::Result<OwnedFd> {
    socket(libc::AF_UNIX, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0)
}

/// `setsockopt(2)` of a value of type `T`.
fn setsockopt<T>(fd: BorrowedFd<'_>, level: c_int, name: c_int, value: &T) -> io::Result<()> {
    // SAFETY: `value` is a live `T` and its exact size is passed; the
    // kernel only reads it. Callers pass the type the option expects.
    cvt(unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (value as *const T).cast(),
            mem::size_of::<T>() as libc::socklen_t,
        )
    })
    .map(drop)
}

/// An integer socket option.
pub fn set_int_opt(fd: BorrowedFd<'_>, level: c_int, name: c_int, value: c_int) -> io::Result<()> {
    setsockopt(fd, level, name, &value)
}

/// An interface name as the kernel's NUL-terminated `IFNAMSIZ` array.
#[derive(Debug, Clone, Copy)]
pub(crate) struct IfName([libc::c_char; libc::IFNAMSIZ]);

impl IfName {
    pub(crate) fn new(ifname: &str) -> io::Result<IfName> {
        let bytes = ifname.as_bytes();
        if bytes.is_empty() || bytes.len() >= libc::IFNAMSIZ || bytes.contains(&0) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{ifname:?} is not a valid interface name"),
            ));
        }
        let mut name = [0; libc::IFNAMSIZ];
        for (dst, &src) in name.iter_mut().zip(bytes) {
            *dst = src as libc::c_char;
        }
        Ok(IfName(name))
    }

    fn ifreq(&self) -> libc::ifreq {
        let mut ifr = zeroed_ifreq();
        ifr.ifr_name = self.0;
        ifr
    }
}

fn zeroed_ifreq() -> libc::ifreq {
    // SAFETY: `ifreq` is plain old data (a name and a union of integers,
    // addresses and a pointer); all zeroes is a valid value of it.
    unsafe { mem::zeroed() }
}

/// Issue an interface ioctl on `fd` (answered in the socket's namespace).
///
/// # Safety
/// `request` must read and write only within `ifr` and, for SIOCETHTOOL,
/// the buffer `ifr.ifr_ifru.ifru_data` points to, which must be alive.
unsafe fn ifreq_ioctl(
    fd: BorrowedFd<'_>,
    request: libc::c_ulong,
    ifr: &mut libc::ifreq,
) -> io::Result<()> {
    // SAFETY: the caller's contract above.
    cvt(unsafe { libc::ioctl(fd.as_raw_fd(), request as _, ifr as *mut libc::ifreq) }).map(drop)
}

/// The index of `name`, asked on `fd` (SIOCGIFINDEX).
pub(crate) fn ifindex(fd: BorrowedFd<'_>, name: &IfName) -> io::Result<u32> {
    let mut ifr = name.ifreq();
    // SAFETY: SIOCGIFINDEX reads the name and writes the index, in `ifr`.
    unsafe { ifreq_ioctl(fd, libc::SIOCGIFINDEX, &mut ifr)? };
    // SAFETY: SIOCGIFINDEX succeeded, so it filled in the index member.
    Ok(unsafe { ifr.ifr_ifru.ifru_ifindex } as u32)
}

/// The MTU (L3 payload size) of `name`, asked on `fd` (SIOCGIFMTU).
pub(crate) fn mtu(fd: BorrowedFd<'_>, name: &IfName) -> io::Result<u32> {
    let mut ifr = name.ifreq();
    // SAFETY: SIOCGIFMTU reads the name and writes the MTU, in `ifr`.
    unsafe { ifreq_ioctl(fd, libc::SIOCGIFMTU, &mut ifr)? };
    // SAFETY: SIOCGIFMTU succeeded, so it filled in the MTU member.
    Ok(u32::try_from(unsafe { ifr.ifr_ifru.ifru_mtu }).unwrap_or(0))
}

/// Whether the interface with `ifindex` is up (IFF_UP), asked on `fd` by
/// index, since its name may have changed. ENODEV: it is gone.
pub(crate) fn is_up(fd: BorrowedFd<'_>, ifindex: u32) -> io::Result<bool> {
    let mut ifr = zeroed_ifreq();
    ifr.ifr_ifru.ifru_ifindex = ifindex as c_int;
    // SAFETY: SIOCGIFNAME reads the index and writes the name, in `ifr`.
    unsafe { ifreq_ioctl(fd, libc::SIOCGIFNAME, &mut ifr)? };
    // SAFETY: SIOCGIFFLAGS reads the name SIOCGIFNAME filled in and writes
    // the flags, in `ifr`.
    unsafe { ifreq_ioctl(fd, libc::SIOCGIFFLAGS, &mut ifr)? };
    // SAFETY: SIOCGIFFLAGS succeeded, so it filled in the flags member.
    let flags = c_int::from(unsafe { ifr.ifr_ifru.ifru_flags });
    Ok(flags & libc::IFF_UP != 0)
}

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

/// The number of RX queues in use (`rx` + `combined` channels), from
/// ETHTOOL_GCHANNELS. Fails with EOPNOTSUPP for drivers without channels.
pub(crate) fn rx_queue_count(fd: BorrowedFd<'_>, name: &IfName) -> io::Result<u32> {
    let mut channels = EthtoolChannels {
        cmd: ETHTOOL_GCHANNELS,
        ..Default::default()
    };
    let mut ifr = name.ifreq();
    ifr.ifr_ifru.ifru_data = (&mut channels as *mut EthtoolChannels).cast();
    // SAFETY: ETHTOOL_GCHANNELS reads the name and writes a struct
    // ethtool_channels through ifru_data, which points at `channels`.
    unsafe { ifreq_ioctl(fd, libc::SIOCETHTOOL, &mut ifr)? };
    Ok(channels.rx_count + channels.combined_count)
}

/// Eight random bytes from getrandom(2); zeroes if it fails, which it does
/// only on a bad buffer.
pub(crate) fn random_u64() -> u64 {
    let mut seed = [0u8; 8];
    // SAFETY: the pointer and length describe `seed`, which outlives the call.
    unsafe { libc::getrandom(seed.as_mut_ptr().cast(), seed.len(), 0) };
    u64::from_ne_bytes(seed)
}

/// Add `fd` to `epoll` for input, with `fd` as the event's data. By number:
/// a descriptor closed meanwhile is only an error (or leaves the set), no
/// memory is touched.
pub(crate) fn epoll_add_in(epoll: &impl AsFd, fd: RawFd) -> io::Result<()> {
    let mut event = libc::epoll_event {
        events: libc::EPOLLIN as u32,
        u64: fd as u64,
    };
    // SAFETY: `event` is a live epoll_event; epoll_ctl copies it.
    cvt(unsafe {
        libc::epoll_ctl(
            epoll.as_fd().as_raw_fd(),
            libc::EPOLL_CTL_ADD,
            fd,
            &mut event,
        )
    })
    .map(drop)
}

/// Run an interface query `f` about `ifname` on a fresh [`ioctl_socket`],
/// i.e. in the calling thread's network namespace.
pub(crate) fn ask_here<T>(
    ifname: &str,
    f: impl FnOnce(BorrowedFd<'_>, &IfName) -> io::Result<T>,
) -> io::Result<T> {
    let name = IfName::new(ifname)?;
    let sock = ioctl_socket()?;
    f(sock.as_fd(), &name)
}
