//! The agent's system calls that neither std nor nix wraps, each behind a
//! safe interface: the only module of the crate allowed `unsafe`.

use std::io;
use std::os::fd::RawFd;
use std::time::Duration;

/// Wait until one of `fds` is readable or `timeout` passes; EINTR is a
/// wakeup like any other. By number: a descriptor closed meanwhile shows up
/// as POLLNVAL, no memory is touched.
pub fn poll_readable(fds: &[RawFd], timeout: Duration) -> io::Result<()> {
    let mut polls: Vec<libc::pollfd> = fds
        .iter()
        .map(|&fd| libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    let ms = timeout.as_micros().div_ceil(1000).min(i32::MAX as u128) as libc::c_int;
    // SAFETY: `polls` holds `polls.len()` pollfds, alive for the call.
    let n = unsafe { libc::poll(polls.as_mut_ptr(), polls.len() as libc::nfds_t, ms) };
    if n < 0 {
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
    Ok(())
}

/// Buffers and headers for `recvmmsg`/`sendmmsg`: `n` messages of up to
/// `cap` bytes, each with room for an IPv4 address.
pub struct Mmsg {
    data: Vec<u8>,
    cap: usize,
    iovs: Vec<libc::iovec>,
    names: Vec<libc::sockaddr_in>,
    hdrs: Vec<libc::mmsghdr>,
}

// SAFETY (for the zeroed values below): iovec, sockaddr_in and mmsghdr are
// plain C structs for which all-zero bytes are valid (null pointers, zero
// lengths).
impl Mmsg {
    pub fn new(n: usize, cap: usize) -> Mmsg {
        Mmsg {
            data: vec![0x5a; n * cap],
            cap,
            // SAFETY: see above.
            iovs: vec![unsafe { std::mem::zeroed() }; n],
            // SAFETY: see above.
            names: vec![unsafe { std::mem::zeroed() }; n],
            // SAFETY: see above.
            hdrs: vec![unsafe { std::mem::zeroed() }; n],
        }
    }

    pub fn slot(&mut self, i: usize) -> &mut [u8] {
        &mut self.data[i * self.cap..(i + 1) * self.cap]
    }

    /// Point the first `count` headers at their buffers (`len(i)` bytes)
    /// and, if `named`, at their address slots.
    fn arm(&mut self, count: usize, len: impl Fn(usize) -> usize, named: bool) {
        let base = self.data.as_mut_ptr();
        for i in 0..count {
            // SAFETY: i < n, so the offset stays inside `data`.
            let ptr = unsafe { base.add(i * self.cap) };
            self.iovs[i] = libc::iovec {
                iov_base: ptr.cast(),
                iov_len: len(i).min(self.cap),
            };
            let hdr = &mut self.hdrs[i];
            hdr.msg_len = 0;
            hdr.msg_hdr.msg_iov = &mut self.iovs[i];
            hdr.msg_hdr.msg_iovlen = 1;
            hdr.msg_hdr.msg_control = std::ptr::null_mut();
            hdr.msg_hdr.msg_controllen = 0;
            hdr.msg_hdr.msg_flags = 0;
            if named {
                hdr.msg_hdr.msg_name = (&mut self.names[i] as *mut libc::sockaddr_in).cast();
                hdr.msg_hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_in>() as u32;
            } else {
                hdr.msg_hdr.msg_name = std::ptr::null_mut();
                hdr.msg_hdr.msg_namelen = 0;
            }
        }
    }

    /// Receive up to `count` datagrams, blocking for the first only.
    pub fn recv(&mut self, fd: RawFd, count: usize, named: bool) -> io::Result<usize> {
        let count = count.min(self.hdrs.len());
        self.arm(count, |_| usize::MAX, named);
        // SAFETY: the first `count` headers point into buffers this struct
        // owns and keeps alive and unmoved for the call.
        let n = unsafe {
            libc::recvmmsg(
                fd,
                self.hdrs.as_mut_ptr(),
                count as u32,
                libc::MSG_WAITFORONE,
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(n as usize)
    }

    /// The `i`-th datagram of the last [`Self::recv`].
    pub fn received(&self, i: usize) -> &[u8] {
        let len = (self.hdrs[i].msg_len as usize).min(self.cap);
        &self.data[i * self.cap..i * self.cap + len]
    }

    /// Send the first `count` slots, `len(i)` bytes each.
    pub fn send(
        &mut self,
        fd: RawFd,
        count: usize,
        len: impl Fn(usize) -> usize,
        named: bool,
    ) -> io::Result<usize> {
        self.arm(count, len, named);
        self.send_armed(fd, count)
    }

    /// Send back the `count` datagrams just received to where they came from.
    pub fn echo(&mut self, fd: RawFd, count: usize) -> io::Result<usize> {
        for i in 0..count {
            self.iovs[i].iov_len = self.hdrs[i].msg_len as usize;
        }
        self.send_armed(fd, count)
    }

    fn send_armed(&mut self, fd: RawFd, count: usize) -> io::Result<usize> {
        let mut done = 0;
        // sendmmsg may stop early (a full socket buffer); a few tries, then
        // UDP's contract: the rest is dropped.
        for _ in 0..4 {
            if done == count {
                break;
            }
            // SAFETY: headers `done..count` were armed and point into
            // buffers this struct owns for the duration of the call.
            let n = unsafe {
                libc::sendmmsg(fd, self.hdrs[done..].as_mut_ptr(), (count - done) as u32, 0)
            };
            if n < 0 {
                let e = io::Error::last_os_error();
                match e.kind() {
                    io::ErrorKind::Interrupted | io::ErrorKind::WouldBlock => continue,
                    // An unreachable port bounced back (ICMP): not ours to fail on.
                    io::ErrorKind::ConnectionRefused => continue,
                    _ => return Err(e),
                }
            }
            done += n as usize;
        }
        Ok(done)
    }
}
