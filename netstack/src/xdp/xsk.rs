//! AF_XDP sockets (xsk-rs), one per RX queue, over one shared UMEM.
//!
//! xsk-rs leaves frame ownership to the caller: handing a frame to the
//! kernel twice, or touching one the kernel owns, is undefined behaviour,
//! which is why its ring and UMEM accessors are `unsafe`. [`XskSet`] keeps
//! every such call behind a safe method and upholds one invariant:
//!
//! > Each frame descriptor of the UMEM is in exactly one place: the `free`
//! > pool (TX frames), a queue's `refill` list (received, to go back on its
//! > fill ring), `scratch` (between a consume and the push that follows it in
//! > the same method), or a ring, where the kernel owns it. Between methods
//! > `scratch` holds only stale copies, which are overwritten, never used.
//!
//! All descriptors come from `Umem::new` of the one UMEM or from that
//! UMEM's rings, so they always belong to it.
//!
//! The UMEM is shared (`XDP_SHARED_UMEM`) across the queues: libxdp gives
//! each (device, queue) context its own fill and completion rings, which
//! the kernel requires for sharing across queues, and one pool of TX frames
//! serves the whole device. TX uses queue 0 only: one datapath thread sends,
//! and one ring keeps frames in order.

use std::io;
use std::num::NonZeroU32;
use std::os::fd::{AsRawFd, RawFd};

use xsk_rs::config::{
    BindFlags, FrameSize, Interface, LibxdpFlags, QueueSize, SocketConfig, UmemConfig,
};
use xsk_rs::{CompQueue, FillQueue, FrameDesc, RxQueue, Socket, TxQueue, Umem};

use crate::sys::xdp as sys;

/// Ring and UMEM sizes for [`XskSet::bind`]; ring sizes are powers of two.
#[derive(Debug, Clone, Copy)]
pub(crate) struct XskConfig {
    /// UMEM frames per RX queue (the shared UMEM holds this × queues).
    pub frames_per_queue: u32,
    pub frame_size: u32,
    pub rx_ring: u32,
    pub tx_ring: u32,
    pub fill_ring: u32,
    pub comp_ring: u32,
    /// Bind with XDP_ZEROCOPY instead of XDP_COPY.
    pub zero_copy: bool,
}

/// Why binding failed, with the errno when the kernel gave one.
#[derive(Debug)]
pub(crate) struct BindError {
    pub what: String,
    pub source: io::Error,
}

impl BindError {
    /// EBUSY: an earlier socket still holds the queue (torn down async).
    pub fn is_busy(&self) -> bool {
        self.source.raw_os_error() == Some(libc::EBUSY)
    }
}

/// Largest batch moved between a ring and the caller at once.
const BATCH: usize = 64;
/// Frames the kernel's copy-mode TX handles per wakeup (TX_BATCH_SIZE).
const KERNEL_TX_BATCH: u32 = 32;

/// One queue's socket and rings.
struct QueueXsk {
    tx: TxQueue,
    rx: RxQueue,
    fill: FillQueue,
    comp: CompQueue,
    /// Received frames not yet back on the fill ring.
    refill: Vec<FrameDesc>,
}

impl QueueXsk {
    fn fd(&self) -> RawFd {
        self.rx.fd().as_raw_fd()
    }
}

/// The sockets of every RX queue of one device, over one UMEM.
pub(crate) struct XskSet {
    // Sockets before the UMEM: xsk-rs keeps the UMEM alive through its
    // handles anyway, but this is the order libxdp wants them deleted.
    queues: Vec<QueueXsk>,
    umem: Umem,
    /// Frames userspace owns, ready to be written and sent.
    free: Vec<FrameDesc>,
    scratch: Vec<FrameDesc>,
    /// Queue that `recv` starts at, rotated so no queue starves.
    next_rx: usize,
    frame_room: usize,
    tx_ring: u32,
}

fn config_error(what: &str, err: impl std::fmt::Display) -> BindError {
    BindError {
        what: format!("{what}: {err}"),
        source: io::Error::from(io::ErrorKind::InvalidInput),
    }
}

fn queue_size(what: &str, size: u32) -> Result<QueueSize, BindError> {
    QueueSize::new(size).map_err(|e| config_error(what, e))
}

impl XskSet {
    /// Create the UMEM and bind one socket to each of `queues` RX queues of
    /// `ifname`, with need-wakeup and without libxdp's own program.
    pub fn bind(ifname: &str, queues: u32, cfg: &XskConfig) -> Result<XskSet, BindError> {
        let umem_cfg = UmemConfig::builder()
            .frame_size(FrameSize::new(cfg.frame_size).map_err(|e| config_error("frame size", e))?)
            .fill_queue_size(queue_size("fill ring", cfg.fill_ring)?)
            .comp_queue_size(queue_size("completion ring", cfg.comp_ring)?)
            .build()
            .map_err(|e| config_error("UMEM configuration", e))?;
        let total = cfg
            .frames_per_queue
            .checked_mul(queues)
            .and_then(NonZeroU32::new)
            .ok_or_else(|| config_error("frame count", "must be non-zero"))?;
        let (umem, mut frames) = Umem::new(umem_cfg, total, false).map_err(|e| BindError {
            what: format!("create UMEM: {e}"),
            source: source_of(&e),
        })?;

        let mode = if cfg.zero_copy {
            BindFlags::XDP_ZEROCOPY
        } else {
            BindFlags::XDP_COPY
        };
        let sock_cfg = SocketConfig::builder()
            .rx_queue_size(queue_size("RX ring", cfg.rx_ring)?)
            .tx_queue_size(queue_size("TX ring", cfg.tx_ring)?)
            .libxdp_flags(LibxdpFlags::XSK_LIBXDP_FLAGS_INHIBIT_PROG_LOAD)
            .bind_flags(mode | BindFlags::XDP_USE_NEED_WAKEUP)
            .build();
        let iface: Interface = ifname
            .parse()
            .map_err(|e| config_error("interface name", e))?;

        // Half a queue's frames wait on its fill ring; the rest join the
        // shared TX pool.
        let per_fill = (cfg.frames_per_queue / 2).min(cfg.fill_ring) as usize;
        let mut sockets = Vec::with_capacity(queues as usize);
        for queue in 0..queues {
            // SAFETY: INHIBIT_PROG_LOAD is set, which xsk-rs requires when a
            // shared UMEM's (device, queue) pair is bound twice; here each
            // pair is bound once, to a fresh UMEM, by this loop alone.
            let created = unsafe { Socket::new(sock_cfg, &umem, &iface, queue) };
            let (tx, rx, rings) = created.map_err(|e| BindError {
                what: format!("bind AF_XDP socket to {ifname} queue {queue}: {e}"),
                source: source_of(&e),
            })?;
            let (fill, comp) = rings.ok_or_else(|| BindError {
                what: format!("libxdp gave queue {queue} no fill/completion rings"),
                source: io::Error::other("missing rings"),
            })?;
            let split = frames.len() - per_fill;
            let refill = frames.split_off(split);
            sockets.push(QueueXsk {
                tx,
                rx,
                fill,
                comp,
                refill,
            });
        }

        let mut set = XskSet {
            queues: sockets,
            umem,
            free: frames,
            scratch: vec![FrameDesc::default(); BATCH],
            next_rx: 0,
            frame_room: umem_cfg.mtu() as usize,
            tx_ring: cfg.tx_ring,
        };
        for q in 0..set.queues.len() {
            set.push_fill(q).map_err(|source| BindError {
                what: format!("wake fill ring of queue {q}"),
                source,
            })?;
        }
        Ok(set)
    }

    /// The socket fds, in queue order (readable when RX has frames).
    pub fn fds(&self) -> Vec<RawFd> {
        self.queues.iter().map(QueueXsk::fd).collect()
    }

    /// Bytes of packet data a frame holds.
    pub fn frame_room(&self) -> usize {
        self.frame_room
    }

    /// Give queue `q`'s received frames back to its fill ring, kicking the
    /// kernel if the ring asks for it.
    fn push_fill(&mut self, q: usize) -> io::Result<()> {
        let queue = &mut self.queues[q];
        if queue.refill.is_empty() {
            return Ok(());
        }
        // SAFETY: the frames in `refill` are ours (invariant) and leave the
        // list only if the ring took them; produce is all-or-nothing, so on
        // a full ring they stay here for the next call.
        let given = unsafe { queue.fill.produce(&queue.refill) };
        if given > 0 {
            queue.refill.clear();
            if queue.fill.needs_wakeup() {
                sys::kick_rx(queue.fd())?;
            }
        }
        Ok(())
    }

    /// Hand up to `budget` received frames to `deliver`.
    pub fn recv(&mut self, budget: usize, deliver: &mut dyn FnMut(&[u8])) -> io::Result<usize> {
        let n = self.queues.len();
        let mut done = 0;
        for i in 0..n {
            let q = (self.next_rx + i) % n;
            while done < budget {
                let want = (budget - done).min(BATCH);
                let queue = &mut self.queues[q];
                // SAFETY: `scratch` holds only stale copies between
                // methods, so overwriting it loses no frame; the RX ring
                // belongs to this UMEM.
                let got = unsafe { queue.rx.consume(&mut self.scratch[..want]) };
                if got == 0 {
                    break;
                }
                for desc in &self.scratch[..got] {
                    // SAFETY: the kernel handed this frame over on the RX
                    // ring and nothing else references it until it goes
                    // back on the fill ring below, after `deliver` returns.
                    let data = unsafe { self.umem.data(desc) };
                    deliver(data.contents());
                }
                queue.refill.extend_from_slice(&self.scratch[..got]);
                done += got;
            }
            self.push_fill(q)?;
        }
        self.next_rx = (self.next_rx + 1) % n;
        Ok(done)
    }

    /// Put a `len`-byte frame written by `fill` on queue 0's TX ring.
    /// `false` when no frame or ring slot is free.
    pub fn send(&mut self, len: usize, fill: &mut dyn FnMut(&mut [u8])) -> bool {
        if self.free.is_empty() {
            self.reclaim();
        }
        let tx = &mut self.queues[0].tx;
        if tx.nb_free(1) == 0 {
            return false;
        }
        let Some(mut desc) = self.free.pop() else {
            return false;
        };
        debug_assert!(len <= self.frame_room, "caller checks the length");
        {
            // SAFETY: `desc` was in `free`, so userspace owns the frame and
            // nothing else references it while `data` lives.
            let mut data = unsafe { self.umem.data_mut(&mut desc) };
            data.cursor().set_pos(len);
            fill(data.contents_mut());
        }
        // SAFETY: the frame is ours and, once produced, is only seen again
        // when the completion ring returns it; a slot was checked free.
        if unsafe { tx.produce_one(&desc) } == 0 {
            self.free.push(desc);
            return false;
        }
        true
    }

    /// Make the kernel transmit what is on the TX ring, then reclaim
    /// finished frames. Kicks only when the ring asks for it.
    pub fn flush(&mut self) -> io::Result<()> {
        // Copy mode sends at most KERNEL_TX_BATCH frames per kick, so a full
        // ring takes several; stop early once a kick makes no progress.
        let max_kicks = self.tx_ring / KERNEL_TX_BATCH + 1;
        let tx = &mut self.queues[0].tx;
        let mut pending = self.tx_ring - tx.nb_free_exact();
        for _ in 0..max_kicks {
            if pending == 0 || !tx.needs_wakeup() {
                break;
            }
            sys::kick_tx(tx.fd().as_raw_fd())?;
            let now = self.tx_ring - tx.nb_free_exact();
            if now >= pending {
                break;
            }
            pending = now;
        }
        self.reclaim();
        Ok(())
    }

    /// Move completed TX frames back to the free pool.
    fn reclaim(&mut self) {
        let comp = &mut self.queues[0].comp;
        loop {
            // SAFETY: `scratch` holds only stale copies; the
            // completion ring belongs to this UMEM and returns frames that
            // went out on this queue's TX ring, which userspace owns again.
            let got = unsafe { comp.consume(&mut self.scratch) };
            self.free.extend_from_slice(&self.scratch[..got]);
            if got < self.scratch.len() {
                break;
            }
        }
    }
}

/// The errno inside an xsk-rs error, or a generic error carrying its text.
fn source_of(err: &(dyn std::error::Error + 'static)) -> io::Error {
    match err.source().and_then(|s| s.downcast_ref::<io::Error>()) {
        Some(io) => match io.raw_os_error() {
            Some(errno) => io::Error::from_raw_os_error(errno),
            None => io::Error::new(io.kind(), io.to_string()),
        },
        None => io::Error::other(err.to_string()),
    }
}
