//! AF_XDP link: the fast path on the primary.
//!
//! [`XdpLink::open`] loads our filter program ([`crate::xdp`]), attaches it
//! through a BPF link, and binds one AF_XDP socket per RX queue over a shared
//! UMEM, trying the best mode first: zero-copy (program in the driver,
//! `XDP_ZEROCOPY`), then driver/copy (`XDP_COPY`), then generic (SKB mode).
//!
//! A vanished device is not seen by `poll` on an XSK (no POLLERR); it shows
//! up as ENXIO/ENETDOWN from the wakeup syscalls, which set
//! [`Health`], and the owner reports RTM_DELLINK through
//! [`Link::set_health`]. Once `Gone`, the link only returns
//! [`LinkError::Gone`]: the sockets cannot be rebound, a new link is needed.
//! `Down` (ENETDOWN) does not stop use, and only the owner sets `Up` again
//! (on carrier): a successful wakeup says nothing about carrier.

use std::fs;
use std::io;
use std::net::IpAddr;
use std::os::fd::RawFd;
use std::thread;
use std::time::{Duration, Instant};

use super::{Health, Link, LinkError, LinkMode};
use crate::sys;
use crate::wire::ETHERNET_HEADER;
use crate::xdp::xsk::{BindError, XskConfig, XskSet};
use crate::xdp::{attached_program, AttachMode, Attachment, Filter};

/// Which AF_XDP mode to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum XdpModeRequest {
    /// The best the device supports: zero-copy, then driver, then generic.
    #[default]
    Auto,
    /// Zero-copy only (program in driver mode, `XDP_ZEROCOPY`).
    ZeroCopy,
    /// Copy mode with the program in the driver only.
    Driver,
    /// Generic (SKB) mode only.
    Generic,
}

/// How to open an [`XdpLink`].
#[derive(Debug, Clone)]
pub struct XdpConfig {
    pub ifname: String,
    /// Addresses whose frames the filter hands to the stack.
    pub addresses: Vec<IpAddr>,
    pub mode: XdpModeRequest,
    /// UMEM frames per RX queue (the UMEM is shared by all queues). Half of
    /// each queue's share waits on its fill ring, the rest is for TX.
    pub frame_count: u32,
    /// Bytes per UMEM frame: a power of two, at least 2048. 256 bytes of it
    /// are XDP headroom.
    pub frame_size: u32,
    /// Ring sizes, powers of two.
    pub rx_ring: u32,
    pub tx_ring: u32,
    pub fill_ring: u32,
    pub comp_ring: u32,
    /// How long `bind` is retried while the kernel still tears down an
    /// earlier socket on the queue (EBUSY).
    pub bind_timeout: Duration,
}

impl Default for XdpConfig {
    fn default() -> Self {
        XdpConfig {
            ifname: String::new(),
            addresses: Vec::new(),
            mode: XdpModeRequest::Auto,
            frame_count: 4096,
            frame_size: 2048,
            rx_ring: 2048,
            tx_ring: 2048,
            fill_ring: 2048,
            comp_ring: 2048,
            bind_timeout: Duration::from_secs(2),
        }
    }
}

/// The AF_XDP link of one device.
pub struct XdpLink {
    // Field order is drop order: the sockets close first (leaving the
    // XSKMAP), then the BPF link detaches the program, then the maps go.
    xsks: XskSet,
    /// Held for its drop, which detaches the program.
    _attachment: Attachment,
    filter: Filter,
    ifname: String,
    ifindex: u32,
    mode: LinkMode,
    max_frame_len: usize,
    health: Health,
}

impl std::fmt::Debug for XdpLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("XdpLink")
            .field("ifname", &self.ifname)
            .field("ifindex", &self.ifindex)
            .field("mode", &self.mode)
            .field("queues", &self.xsks.fds().len())
            .field("health", &self.health)
            .finish_non_exhaustive()
    }
}

/// First bind retry delay after EBUSY; doubled up to `MAX_BIND_BACKOFF`.
const FIRST_BIND_BACKOFF: Duration = Duration::from_millis(5);
const MAX_BIND_BACKOFF: Duration = Duration::from_millis(200);

fn candidates(request: XdpModeRequest) -> &'static [LinkMode] {
    match request {
        XdpModeRequest::Auto => &[
            LinkMode::XdpZeroCopy,
            LinkMode::XdpDriver,
            LinkMode::XdpGeneric,
        ],
        XdpModeRequest::ZeroCopy => &[LinkMode::XdpZeroCopy],
        XdpModeRequest::Driver => &[LinkMode::XdpDriver],
        XdpModeRequest::Generic => &[LinkMode::XdpGeneric],
    }
}

fn attach_mode(mode: LinkMode) -> AttachMode {
    match mode {
        LinkMode::XdpGeneric => AttachMode::Generic,
        _ => AttachMode::Driver,
    }
}

fn already_attached(ifname: &str, id: u32, mode: &'static str) -> LinkError {
    LinkError::ForeignProgram {
        ifname: ifname.to_owned(),
        id,
        mode,
    }
}

impl XdpLink {
    /// Attach the filter to `cfg.ifname` and bind its queues, best mode
    /// first. Fails with [`LinkError::ForeignProgram`] if another XDP program is
    /// attached, and with `Gone` if the device does not exist.
    pub fn open(cfg: &XdpConfig) -> Result<XdpLink, LinkError> {
        let ifname = cfg.ifname.as_str();
        let ifindex = sys::ask_here(ifname, sys::ifindex)
            .map_err(|e| LinkError::from_io(ifname, "look up interface", e))?;
        let foreign = attached_program(ifindex)
            .map_err(|e| LinkError::from_io(ifname, "query XDP programs", e))?;
        if let Some((id, mode)) = foreign {
            return Err(already_attached(ifname, id, mode));
        }
        let queues = rx_queue_count(ifname, ifindex);
        let mut filter = Filter::load(queues)?;
        filter.set_addresses(&cfg.addresses)?;

        let deadline = Instant::now() + cfg.bind_timeout;
        let mut failures = Vec::new();
        let mut attachment: Option<Attachment> = None;
        for &mode in candidates(cfg.mode) {
            let wanted = attach_mode(mode);
            if attachment.as_ref().map(Attachment::mode) != Some(wanted) {
                // The kernel refuses driver and generic programs at once.
                attachment = None;
                match filter.attach(ifindex, wanted) {
                    Ok(a) => attachment = Some(a),
                    Err(e) if matches!(e.raw_os_error(), Some(libc::EBUSY | libc::EEXIST)) => {
                        return Err(match attached_program(ifindex) {
                            Ok(Some((id, m))) => already_attached(ifname, id, m),
                            _ => LinkError::AttachRefused {
                                ifname: ifname.to_owned(),
                                error: e,
                            },
                        });
                    }
                    Err(e) => {
                        tracing::debug!(ifname, %mode, error = %e, "XDP attach failed");
                        failures.push(format!("{mode}: attach in {wanted} mode: {e}"));
                        continue;
                    }
                }
            }
            // Only reached with a program attached in `wanted` mode.
            let Some(current) = attachment.take() else {
                continue;
            };
            let xsk_cfg = XskConfig {
                frames_per_queue: cfg.frame_count,
                frame_size: cfg.frame_size,
                rx_ring: cfg.rx_ring,
                tx_ring: cfg.tx_ring,
                fill_ring: cfg.fill_ring,
                comp_ring: cfg.comp_ring,
                zero_copy: mode == LinkMode::XdpZeroCopy,
            };
            match bind_retrying(ifname, queues, &xsk_cfg, deadline) {
                Ok(xsks) => return XdpLink::finish(ifname, ifindex, mode, filter, current, xsks),
                Err(e) if e.is_busy() => {
                    return Err(LinkError::QueueBusy {
                        what: e.what,
                        error: e.source,
                        waited: cfg.bind_timeout,
                    });
                }
                Err(e) => {
                    tracing::debug!(ifname, %mode, error = %e.source, "{}", e.what);
                    failures.push(format!("{mode}: {}: {}", e.what, e.source));
                    attachment = Some(current);
                }
            }
        }
        Err(LinkError::NoXdpMode {
            ifname: ifname.to_owned(),
            failures,
        })
    }

    fn finish(
        ifname: &str,
        ifindex: u32,
        mode: LinkMode,
        filter: Filter,
        attachment: Attachment,
        xsks: XskSet,
    ) -> Result<XdpLink, LinkError> {
        for (queue, fd) in (0u32..).zip(xsks.fds()) {
            filter.insert_socket(queue, fd)?;
        }
        let room = xsks.frame_room();
        let max_frame_len = match sys::ask_here(ifname, sys::mtu) {
            Ok(mtu) => room.min(mtu as usize + ETHERNET_HEADER),
            Err(_) => room,
        };
        tracing::info!(
            ifname,
            ifindex,
            %mode,
            queues = xsks.fds().len(),
            max_frame_len,
            "AF_XDP link open"
        );
        Ok(XdpLink {
            xsks,
            _attachment: attachment,
            filter,
            ifname: ifname.to_owned(),
            ifindex,
            mode,
            max_frame_len,
            health: Health::Up,
        })
    }

    /// Record an error from use: a vanished or downed device sets health.
    fn fail(&mut self, what: &'static str, err: io::Error) -> LinkError {
        let err = LinkError::from_io(&self.ifname, what, err);
        if let Some(health) = err.health() {
            self.health = health;
        }
        err
    }

    /// A gone device's sockets are dead for good; don't touch them.
    fn usable(&self) -> Result<(), LinkError> {
        match self.health {
            Health::Gone => Err(LinkError::Gone(self.ifname.clone())),
            Health::Up | Health::Down => Ok(()),
        }
    }
}

/// Bind, retrying EBUSY with a growing delay until `deadline`.
fn bind_retrying(
    ifname: &str,
    queues: u32,
    cfg: &XskConfig,
    deadline: Instant,
) -> Result<XskSet, BindError> {
    let mut delay = FIRST_BIND_BACKOFF;
    loop {
        match XskSet::bind(ifname, queues, cfg) {
            Err(e) if e.is_busy() => {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(e);
                }
                tracing::debug!(ifname, error = %e.what, "AF_XDP bind busy, retrying");
                thread::sleep(delay.min(left));
                delay = (delay * 2).min(MAX_BIND_BACKOFF);
            }
            other => return other,
        }
    }
}

/// RX queues of the device: ethtool channels, else sysfs, else one.
fn rx_queue_count(ifname: &str, ifindex: u32) -> u32 {
    match sys::ask_here(ifname, sys::rx_queue_count) {
        Ok(n) if n > 0 => return n,
        Ok(_) => {}
        Err(e) => tracing::debug!(ifname, error = %e, "ETHTOOL_GCHANNELS failed"),
    }
    // sysfs shows the namespace /sys was mounted in, which need not be
    // ours: trust it only if the name there has our ifindex.
    let dir = format!("/sys/class/net/{ifname}");
    let same_device = fs::read_to_string(format!("{dir}/ifindex"))
        .is_ok_and(|s| s.trim().parse::<u32>().ok() == Some(ifindex));
    if same_device {
        if let Ok(entries) = fs::read_dir(format!("{dir}/queues")) {
            let n = entries
                .filter_map(Result::ok)
                .filter(|e| e.file_name().to_string_lossy().starts_with("rx-"))
                .count();
            if n > 0 {
                return u32::try_from(n).unwrap_or(u32::MAX);
            }
        }
    }
    tracing::warn!(ifname, "cannot count RX queues; binding queue 0 only");
    1
}

impl Link for XdpLink {
    fn ifname(&self) -> &str {
        &self.ifname
    }

    fn ifindex(&self) -> u32 {
        self.ifindex
    }

    fn mode(&self) -> LinkMode {
        self.mode
    }

    fn max_frame_len(&self) -> usize {
        self.max_frame_len
    }

    fn recv(&mut self, budget: usize, deliver: &mut dyn FnMut(&[u8])) -> Result<usize, LinkError> {
        self.usable()?;
        self.xsks
            .recv(budget, deliver)
            .map_err(|e| self.fail("wake the fill ring", e))
    }

    fn send(&mut self, len: usize, fill: &mut dyn FnMut(&mut [u8])) -> Result<bool, LinkError> {
        self.usable()?;
        if len > self.max_frame_len {
            return Err(LinkError::TooLong {
                len,
                max: self.max_frame_len,
            });
        }
        Ok(self.xsks.send(len, fill))
    }

    fn flush(&mut self) -> Result<(), LinkError> {
        self.usable()?;
        self.xsks.flush().map_err(|e| self.fail("wake TX", e))
    }

    fn fds(&self) -> Vec<RawFd> {
        self.xsks.fds()
    }

    fn set_addresses(&mut self, addrs: &[IpAddr]) -> Result<(), LinkError> {
        self.filter.set_addresses(addrs)
    }

    fn health(&self) -> Health {
        self.health
    }

    fn set_health(&mut self, health: Health) {
        self.health = health;
    }
}
