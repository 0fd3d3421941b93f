//! [`FailoverDevice`]: a smoltcp `phy::Device` over a standby link and an
//! optional primary link.
//!
//! TX goes on the primary while it is attached and up, else on the standby
//! while it exists, else it is counted as dropped. RX is taken from both,
//! always: during a switch frames arrive on either, and some hosts deliver
//! broadcasts and SYNs on the paravirtual NIC even while the VF is up.
//! Links can be attached and detached at run time; smoltcp's sockets never
//! notice, which is what lets TCP connections survive a switch. What the
//! old path lost, the [`Resender`] sends again on the new one at once, so
//! TCP does not wait for smoltcp's retransmission timer.

use std::collections::VecDeque;
use std::net::IpAddr;
use std::os::fd::RawFd;
use std::time::{Instant, SystemTime};

use smoltcp::phy::{self, DeviceCapabilities, Medium};
use smoltcp::time::Instant as SmolInstant;

use crate::link::{Health, Link, LinkError};
use crate::mac::MacAddr;
use crate::resend::{ResendLimits, Resender};
use crate::stats::{Path, Stats, Switch, SwitchCause};
use crate::wire::check::check_frame;
use crate::wire::tcp::strip_sack_permitted;
use crate::wire::ETHERNET_HEADER;

/// Where an Ethernet frame's source MAC is ([`check_frame`] saw a whole
/// header).
const ETH_SOURCE: std::ops::Range<usize> = 6..12;
/// Frames taken from each link per receive round, so one busy link cannot
/// starve the other or the TX side.
const RX_BUDGET: usize = 64;

/// The failover pair as one smoltcp device.
pub struct FailoverDevice {
    primary: Option<Box<dyn Link>>,
    /// The primary receives but does not carry TX yet (its hold is not
    /// over): see [`FailoverDevice::attach_held_primary`].
    primary_held: bool,
    standby: Option<Box<dyn Link>>,
    path: Path,
    stats: Stats,
    addresses: Vec<IpAddr>,
    /// The stack's MAC: frames received from it are its own, looped back.
    mac: MacAddr,
    mtu: usize,
    rx_queue: VecDeque<Vec<u8>>,
    /// Links are read once per [`FailoverDevice::begin_round`], so a flood
    /// cannot keep smoltcp's ingress loop spinning forever.
    rx_pending_round: bool,
    /// When the path last changed, until the first frame goes out on it.
    switch_started: Option<Instant>,
    /// Bumped whenever a link is attached or detached, so the owner knows
    /// to re-register file descriptors.
    generation: u64,
    resender: Resender,
    /// Offer peers SACK (smoltcp's default); off, SACK-permitted is taken
    /// out of their SYNs (see [`crate::wire::tcp`] for why).
    tcp_sack: bool,
    /// When the current receive round began: the clock for the resender,
    /// read once per round rather than per frame.
    round_started: Instant,
    /// The path changed (or a migration was signalled): resend at the next
    /// flush, once the round's own frames are out.
    resend_due: bool,
}

impl FailoverDevice {
    /// The IP MTU of the links.
    pub fn mtu(&self) -> usize {
        self.mtu
    }

    /// A device for the stack with MAC `mac`, with an IP MTU of `mtu` bytes,
    /// over the links present at start. The first path is chosen from them
    /// and is not a switch.
    pub fn new(
        standby: Option<Box<dyn Link>>,
        primary: Option<Box<dyn Link>>,
        mac: MacAddr,
        mtu: usize,
        resend: ResendLimits,
    ) -> Self {
        let mut device = FailoverDevice {
            primary,
            primary_held: false,
            standby,
            path: Path::None,
            stats: Stats::default(),
            addresses: Vec::new(),
            mac,
            mtu,
            rx_queue: VecDeque::new(),
            rx_pending_round: true,
            switch_started: None,
            generation: 0,
            resender: Resender::new(resend),
            tcp_sack: true,
            round_started: Instant::now(),
            resend_due: false,
        };
        device.path = device.choose();
        device
    }

    pub fn path(&self) -> Path {
        self.path
    }

    /// The stack's MAC changed (a new pairing).
    pub fn set_mac(&mut self, mac: MacAddr) {
        self.mac = mac;
    }

    /// The counters, with the resender's as of now.
    pub fn stats(&self) -> Stats {
        Stats {
            resend: self.resender.counters(),
            ..self.stats.clone()
        }
    }

    /// Frames received and sent on both paths so far.
    pub fn frames_moved(&self) -> u64 {
        let s = &self.stats;
        s.primary.rx_packets + s.primary.tx_packets + s.standby.rx_packets + s.standby.tx_packets
    }

    pub fn primary(&self) -> Option<&dyn Link> {
        self.primary.as_deref()
    }

    pub fn standby(&self) -> Option<&dyn Link> {
        self.standby.as_deref()
    }

    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Attach a primary, replacing (and returning) any previous one. The
    /// link gets the current address set; if that fails it is refused.
    pub fn attach_primary(
        &mut self,
        link: Box<dyn Link>,
    ) -> Result<Option<Box<dyn Link>>, LinkError> {
        self.put_primary(link, false)
    }

    /// Attach a primary to receive only, until
    /// [`release_primary`](Self::release_primary): frames for the stack may
    /// arrive on a new VF before it has earned TX (the guest kernel sending
    /// through it moves the MAC there in the switch). A held primary whose
    /// device goes away is dropped.
    pub fn attach_held_primary(
        &mut self,
        link: Box<dyn Link>,
    ) -> Result<Option<Box<dyn Link>>, LinkError> {
        self.put_primary(link, true)
    }

    /// Let a held primary carry TX. Returns false when no primary is held.
    pub fn release_primary(&mut self) -> bool {
        if !self.primary_held() {
            return false;
        }
        self.primary_held = false;
        self.reselect(SwitchCause::PrimaryAttached);
        true
    }

    /// Whether the primary (if any) receives only.
    pub fn primary_held(&self) -> bool {
        self.primary.is_some() && self.primary_held
    }

    pub fn detach_primary(&mut self) -> Option<Box<dyn Link>> {
        let old = self.primary.take();
        self.primary_held = false;
        self.generation += 1;
        self.reselect(SwitchCause::PrimaryDetached);
        old
    }

    fn put_primary(
        &mut self,
        mut link: Box<dyn Link>,
        held: bool,
    ) -> Result<Option<Box<dyn Link>>, LinkError> {
        link.set_addresses(&self.addresses)?;
        let old = self.primary.replace(link);
        self.primary_held = held;
        self.generation += 1;
        self.reselect(SwitchCause::PrimaryAttached);
        Ok(old)
    }

    /// Attach a standby, replacing (and returning) any previous one. A link
    /// that refuses the address set still attaches: with no other link the
    /// stack would be deaf, so it is better to log and carry on.
    pub fn attach_standby(&mut self, mut link: Box<dyn Link>) -> Option<Box<dyn Link>> {
        if let Err(e) = link.set_addresses(&self.addresses) {
            tracing::warn!(ifname = link.ifname(), error = %e, "standby refused the address set");
        }
        let old = self.standby.replace(link);
        self.generation += 1;
        self.reselect(SwitchCause::StandbyAttached);
        old
    }

    pub fn detach_standby(&mut self) -> Option<Box<dyn Link>> {
        let old = self.standby.take();
        self.generation += 1;
        self.reselect(SwitchCause::StandbyDetached);
        old
    }

    /// Give every link the stack's addresses, so their filters take exactly
    /// the frames the stack owns.
    pub fn set_addresses(&mut self, addresses: &[IpAddr]) -> Result<(), LinkError> {
        self.addresses = addresses.to_vec();
        for link in self.links_mut() {
            link.set_addresses(addresses)?;
        }
        Ok(())
    }

    /// Record what rtnetlink (or an error on use) says about interface
    /// `ifindex`, and choose the path again. The link may already have
    /// marked itself, so the path is re-chosen whenever the link is ours.
    pub fn set_link_health(&mut self, ifindex: u32, health: Health) {
        let recovered = health == Health::Up;
        if health == Health::Gone
            && self.primary_held
            && self
                .primary
                .as_deref()
                .is_some_and(|l| l.ifindex() == ifindex)
        {
            // Never carried TX, and nobody else will detach it.
            self.primary = None;
            self.primary_held = false;
            self.generation += 1;
            return;
        }
        let cause = if let Some(link) = self
            .primary
            .as_deref_mut()
            .filter(|l| l.ifindex() == ifindex)
        {
            link.set_health(health);
            if recovered {
                SwitchCause::PrimaryRecovered
            } else {
                SwitchCause::PrimaryLost
            }
        } else if let Some(link) = self
            .standby
            .as_deref_mut()
            .filter(|l| l.ifindex() == ifindex)
        {
            link.set_health(health);
            if recovered {
                SwitchCause::StandbyAttached
            } else {
                SwitchCause::StandbyLost
            }
        } else {
            return;
        };
        self.reselect(cause);
    }

    /// File descriptors that become readable when a link has frames.
    pub fn fds(&self) -> Vec<RawFd> {
        self.links().flat_map(|link| link.fds()).collect()
    }

    /// Allow the next `receive` to read the links again.
    pub fn begin_round(&mut self) {
        self.rx_pending_round = true;
        self.round_started = Instant::now();
    }

    /// Frames waiting for smoltcp.
    pub fn rx_queued(&self) -> usize {
        self.rx_queue.len()
    }

    /// Whether new TCP connections may use SACK. Off, a peer that lost
    /// segments in a failover retransmits them on the repeated ACKs instead
    /// of waiting for its RTO.
    pub fn set_tcp_sack(&mut self, enabled: bool) {
        self.tcp_sack = enabled;
    }

    /// Replace what the resender may hold; what it held is dropped.
    pub fn set_resend_limits(&mut self, limits: ResendLimits) {
        self.resender = Resender::new(limits);
    }

    /// Send every unacknowledged TCP segment again on the current path, at
    /// the next flush: after a migration, what went out before the network
    /// learnt where the guest is now may be lost.
    pub fn resend_unacked(&mut self) {
        self.resend_due = true;
    }

    /// Push queued TX frames to the devices and reclaim finished ones.
    pub fn flush(&mut self) {
        if std::mem::take(&mut self.resend_due) && self.path != Path::None {
            self.resend();
        }
        let mut lost = Vec::new();
        for link in self.links_mut() {
            if let Err(e) = link.flush() {
                note_error(link, &e, &mut lost);
            }
        }
        self.apply_lost(lost);
    }

    /// Send a frame the stack did not build through smoltcp (announcements)
    /// on the active path. Returns whether a link took it.
    pub fn send_raw(&mut self, frame: &[u8]) -> bool {
        self.transmit_frame(frame.len(), |buf| buf.copy_from_slice(frame))
            .1
    }

    fn resend(&mut self) {
        // Taken out for the call, as sending needs `self` whole. The stand-in
        // is off: the frames sent again are not to be noted as new.
        let off = ResendLimits {
            enabled: false,
            ..ResendLimits::default()
        };
        let mut resender = std::mem::replace(&mut self.resender, Resender::new(off));
        resender.resend(|frame| self.send_raw(frame));
        self.resender = resender;
    }

    fn links(&self) -> impl Iterator<Item = &dyn Link> {
        self.primary
            .as_deref()
            .into_iter()
            .chain(self.standby.as_deref())
    }

    fn links_mut(&mut self) -> impl Iterator<Item = &mut (dyn Link + 'static)> {
        self.primary
            .as_deref_mut()
            .into_iter()
            .chain(self.standby.as_deref_mut())
    }

    fn choose(&self) -> Path {
        // The primary must be up (carrier) to carry TX; the standby only has
        // to exist: while it is the last link, a down carrier is no reason to
        // stop trying (virtio's carrier can blink during a migration).
        if !self.primary_held
            && self
                .primary
                .as_deref()
                .is_some_and(|l| l.health() == Health::Up)
        {
            Path::Primary
        } else if self
            .standby
            .as_deref()
            .is_some_and(|l| l.health() != Health::Gone)
        {
            Path::Standby
        } else {
            Path::None
        }
    }

    fn reselect(&mut self, cause: SwitchCause) {
        let to = self.choose();
        if to == self.path {
            return;
        }
        tracing::info!(from = %self.path, to = %to, ?cause, "path switch");
        self.stats.switches += 1;
        self.stats.last_switch = Some(Switch {
            from: self.path,
            to,
            cause,
            at: SystemTime::now(),
            first_tx_after: None,
        });
        self.path = to;
        self.switch_started = Some(Instant::now());
        self.resend_due = to != Path::None;
    }

    fn apply_lost(&mut self, lost: Vec<(u32, Health)>) {
        for (ifindex, health) in lost {
            self.set_link_health(ifindex, health);
        }
    }

    fn fill_rx(&mut self) {
        self.rx_pending_round = false;
        let mut lost = Vec::new();
        let (primary, standby) = (&mut self.primary, &mut self.standby);
        let queue = &mut self.rx_queue;
        let resender = &mut self.resender;
        let sack = self.tcp_sack;
        let own = self.mac.0;
        for (path, link) in [(Path::Primary, primary), (Path::Standby, standby)] {
            let Some(link) = link.as_deref_mut() else {
                continue;
            };
            let Some(counters) = self.stats.path_mut(path) else {
                continue;
            };
            let result = link.recv(RX_BUDGET, &mut |frame| match check_frame(frame) {
                Ok(()) if frame[ETH_SOURCE] == own => counters.rx_looped += 1,
                Ok(()) => {
                    counters.rx(frame.len());
                    resender.on_received(frame);
                    let mut frame = frame.to_vec();
                    if !sack {
                        strip_sack_permitted(&mut frame);
                    }
                    queue.push_back(frame);
                }
                Err(_) => counters.rx_malformed += 1,
            });
            if let Err(e) = result {
                note_error(link, &e, &mut lost);
            }
        }
        self.apply_lost(lost);
    }

    /// Send one frame of `len` bytes on the active path; returns `fill`'s
    /// result and whether a link took the frame. When none did, `fill` still
    /// runs, on a scratch buffer: smoltcp expects its closure to run.
    fn transmit_frame<R>(&mut self, len: usize, fill: impl FnOnce(&mut [u8]) -> R) -> (R, bool) {
        let path = self.path;
        let link = match path {
            Path::Primary => self.primary.as_deref_mut(),
            Path::Standby => self.standby.as_deref_mut(),
            Path::None => None,
        };
        let mut fill = Some(fill);
        let mut out = None;
        let mut lost = Vec::new();
        let mut sent = false;
        let now = self.round_started;
        if let Some(link) = link {
            let resender = &mut self.resender;
            let mut write = |buf: &mut [u8]| {
                if let Some(fill) = fill.take() {
                    out = Some(fill(buf));
                    resender.on_sent(buf, now);
                }
            };
            match link.send(len, &mut write) {
                Ok(taken) => sent = taken,
                Err(e) => note_error(link, &e, &mut lost),
            }
        }
        match self.stats.path_mut(path) {
            Some(counters) if sent => counters.tx(len),
            Some(counters) => counters.tx_dropped += 1,
            None => self.stats.tx_no_path += 1,
        }
        if sent {
            if let Some(started) = self.switch_started.take() {
                if let Some(switch) = self.stats.last_switch.as_mut() {
                    switch.first_tx_after = Some(started.elapsed());
                }
            }
        }
        self.apply_lost(lost);
        let result = match (out, fill) {
            (Some(r), _) => r,
            (None, Some(fill)) => {
                // Lost, but smoltcp counts it as sent: keep it for a resend.
                let mut frame = vec![0; len];
                let r = fill(&mut frame);
                self.resender.on_sent(&frame, now);
                r
            }
            (None, None) => unreachable!("`out` is set whenever `fill` is taken"),
        };
        (result, sent)
    }
}

/// Log a link error and, when it says the device is down or gone, remember
/// to update that link's health once the borrow on it ends.
fn note_error(link: &mut dyn Link, error: &LinkError, lost: &mut Vec<(u32, Health)>) {
    match error.health() {
        Some(health) => lost.push((link.ifindex(), health)),
        None => tracing::warn!(ifname = link.ifname(), %error, "link error"),
    }
}

impl phy::Device for FailoverDevice {
    type RxToken<'a> = RxToken;
    type TxToken<'a> = TxToken<'a>;

    fn receive(&mut self, _now: SmolInstant) -> Option<(RxToken, TxToken<'_>)> {
        if self.rx_queue.is_empty() && self.rx_pending_round {
            self.fill_rx();
        }
        let frame = self.rx_queue.pop_front()?;
        Some((RxToken(frame), TxToken(self)))
    }

    fn transmit(&mut self, _now: SmolInstant) -> Option<TxToken<'_>> {
        Some(TxToken(self))
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ethernet;
        // smoltcp's MTU for Ethernet includes the header.
        caps.max_transmission_unit = self.mtu + ETHERNET_HEADER;
        caps.max_burst_size = Some(RX_BUDGET);
        caps
    }
}

/// A received frame, copied out of the link's ring.
pub struct RxToken(Vec<u8>);

impl phy::RxToken for RxToken {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(&self.0)
    }
}

/// Permission to send one frame on the active path.
pub struct TxToken<'a>(&'a mut FailoverDevice);

impl phy::TxToken for TxToken<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        self.0.transmit_frame(len, f).0
    }
}
