//! AF_PACKET sockets: the standby's packet link and the lab's capture.

use std::io;
use std::mem;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};
use std::time::Duration;

use libc::{c_int, c_void, sock_filter};

use super::{cvt, setsockopt, socket};

/// Every protocol (`ETH_P_ALL`).
pub const ETH_P_ALL: u16 = libc::ETH_P_ALL as u16;

/// A raw packet socket for `protocol` (0: no frames until [`bind`]).
pub fn open(protocol: u16, nonblocking: bool) -> io::Result<OwnedFd> {
    let mut ty = libc::SOCK_RAW | libc::SOCK_CLOEXEC;
    if nonblocking {
        ty |= libc::SOCK_NONBLOCK;
    }
    socket(libc::AF_PACKET, ty, c_int::from(protocol.to_be()))
}

/// Bind to the interface `ifindex`, receiving `protocol`.
pub fn bind(fd: BorrowedFd<'_>, ifindex: u32, protocol: u16) -> io::Result<()> {
    // SAFETY: `sockaddr_ll` is plain old data; all zeroes is valid.
    let mut addr: libc::sockaddr_ll = unsafe { mem::zeroed() };
    addr.sll_family = libc::AF_PACKET as u16;
    addr.sll_protocol = protocol.to_be();
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

/// Attach a classic BPF socket filter (the kernel copies it).
pub fn attach_filter(fd: BorrowedFd<'_>, program: &[sock_filter]) -> io::Result<()> {
    let len = u16::try_from(program.len()).map_err(|_| io::ErrorKind::InvalidInput)?;
    let fprog = libc::sock_fprog {
        len,
        // The kernel only reads through this pointer.
        filter: program.as_ptr().cast_mut(),
    };
    setsockopt(fd, libc::SOL_SOCKET, libc::SO_ATTACH_FILTER, &fprog)
}

/// How long a blocking receive waits (`SO_RCVTIMEO`).
pub fn set_recv_timeout(fd: BorrowedFd<'_>, timeout: Duration) -> io::Result<()> {
    let tv = libc::timeval {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_usec: timeout.subsec_micros() as libc::suseconds_t,
    };
    setsockopt(fd, libc::SOL_SOCKET, libc::SO_RCVTIMEO, &tv)
}

/// `recv(2)` into `buf` with `flags`; the frame's length (its full length
/// with `MSG_TRUNC`).
pub fn recv(fd: BorrowedFd<'_>, buf: &mut [u8], flags: c_int) -> io::Result<usize> {
    // SAFETY: the kernel writes at most `buf.len()` bytes into `buf`.
    let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), flags) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n as usize)
}

/// Send one frame without blocking.
pub fn send(fd: BorrowedFd<'_>, frame: &[u8]) -> io::Result<()> {
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

/// One received message: its length and whether it did not fit its slot.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Received {
    pub(crate) len: usize,
    pub(crate) truncated: bool,
}

/// Most messages one [`recv_batch`] takes.
pub(crate) const MAX_BATCH: usize = 32;

/// One non-blocking `recvmmsg` of up to `frames.len()` messages (at most
/// [`MAX_BATCH`]), the i-th into the i-th `slot`-byte slot of `buf`.
/// Returns how many arrived.
pub(crate) fn recv_batch(
    fd: BorrowedFd<'_>,
    buf: &mut [u8],
    slot: usize,
    frames: &mut [Received],
) -> io::Result<usize> {
    let mut iovs: [libc::iovec; MAX_BATCH] = std::array::from_fn(|_| libc::iovec {
        iov_base: std::ptr::null_mut(),
        iov_len: 0,
    });
    // SAFETY: `mmsghdr` is plain old data; all zeroes is an empty message.
    let mut msgs: [libc::mmsghdr; MAX_BATCH] = unsafe { mem::zeroed() };
    let n = frames.len().min(MAX_BATCH).min(buf.len() / slot);
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
