//! The XDP link's own calls: attaching a program through a BPF link,
//! querying what is attached, and the AF_XDP wakeups.

use std::io;
use std::mem;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::ptr;

use libbpf_rs::libbpf_sys;

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
