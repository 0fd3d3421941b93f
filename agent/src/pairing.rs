//! Pairing: devices in, pairs out.
//!
//! The kernel's net/core/failover.c semantics, adapted to a userspace stack:
//! a pair is one standby plus at most one primary with the same (permanent)
//! MAC; the failover master is neither; a second primary is refused. Unlike
//! the kernel we do not attach a primary the instant it registers: a VF that
//! has just been hot-plugged may still be renamed or probed, so it must have
//! been up with carrier for a settle time first, and a primary that flaps
//! waits longer each time (hysteresis) instead of bouncing the path. Losing a
//! primary, on the other hand, is acted on at once: TX must leave it.
//! Receiving is another matter: a candidate that is administratively up is
//! offered at once ([`Action::PrimarySeen`]) so the stack can take frames
//! from it during the hold. The moment the guest kernel sends anything
//! through it, the switch learns the MAC there, and frames for the stack
//! that arrive on a NIC nobody listens to are lost.
//!
//! Everything is keyed on ifindex; names are only for explicit specs (to find
//! the standby) and for display. Pure logic: [`Pairing::update`] takes the
//! device table and the time, and returns what the daemon must do.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use vfailover_netstack::mac::MacAddr;

use crate::discovery::{Class, NetDev};

/// One pair as configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PairSpec {
    pub name: String,
    /// The standby's ifname. `None`: the next auto-detected standby
    /// ([`Class::Standby`]). Named, it may be any netdev (a veth in a lab),
    /// and its primary any non-master netdev with the pair's MAC.
    pub standby: Option<String>,
    /// The pair's MAC; by default the standby's [`NetDev::key_mac`].
    pub primary_mac: Option<MacAddr>,
}

/// When TX may move back to a primary (`[failback]` in the config): how
/// long it must be up with carrier before it is attached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Failback {
    /// The wait after the primary is ready.
    pub hold: Duration,
    /// Flaps within this window double the wait, each.
    pub flap_window: Duration,
    /// The longest wait, however much the primary flaps.
    pub max_hold: Duration,
}

impl Default for Failback {
    fn default() -> Failback {
        Failback {
            hold: Duration::from_millis(200),
            flap_window: Duration::from_secs(30),
            max_hold: Duration::from_secs(10),
        }
    }
}

impl Failback {
    /// The wait after `flaps` recent flaps.
    fn after(&self, flaps: usize) -> Duration {
        let factor = 1u32 << flaps.min(31);
        self.hold
            .saturating_mul(factor)
            .min(self.max_hold.max(self.hold))
    }
}

/// Why a primary was detached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DetachReason {
    /// The device unregistered (hot-unplug: a migration is coming).
    Removed,
    /// Administratively down or no carrier.
    Down,
    /// It no longer qualifies (its MAC changed, it became a master).
    Refused,
}

/// What the daemon must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    StandbyFound {
        pair: String,
        dev: NetDev,
    },
    /// The daemon keeps the stack and its sockets; the pair is degraded.
    StandbyLost {
        pair: String,
        ifindex: u32,
    },
    AttachPrimary {
        pair: String,
        dev: NetDev,
    },
    /// A device that will be the primary once its hold is over is up: open
    /// it to receive, not yet to send. Once per device.
    PrimarySeen {
        pair: String,
        dev: NetDev,
    },
    /// A device that can be the primary appeared after the pair's primary
    /// was removed: a migration signal. It comes as soon as the device
    /// registers, before its carrier (seconds later for an emulated e1000e)
    /// and its attach.
    PrimaryReturned {
        pair: String,
        ifindex: u32,
    },
    DetachPrimary {
        pair: String,
        ifindex: u32,
        reason: DetachReason,
    },
    /// The standby has carrier again after losing it: its far end may have
    /// moved to another host (a migration signal).
    StandbyCarrierBack {
        pair: String,
        ifindex: u32,
    },
    /// A device that matches a pair but cannot join it (reported once).
    Refused {
        dev: NetDev,
        reason: String,
    },
}

/// A device of a pair, by ifindex, with its current name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub ifindex: u32,
    pub ifname: String,
}

impl Member {
    fn of(dev: &NetDev) -> Member {
        Member {
            ifindex: dev.ifindex,
            ifname: dev.ifname.clone(),
        }
    }
}

/// A pair, for `status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PairView {
    pub name: String,
    pub mac: Option<MacAddr>,
    pub standby: Option<Member>,
    pub primary: Option<Member>,
    /// A primary waiting out its hold, and when it will be attached.
    pub pending: Option<(Member, Instant)>,
    pub refused: Vec<(Member, String)>,
}

/// The pairs and their state.
#[derive(Debug)]
pub struct Pairing {
    failback: Failback,
    pairs: Vec<Pair>,
}

impl Pairing {
    pub fn new(specs: Vec<PairSpec>, failback: Failback) -> Pairing {
        Pairing {
            failback,
            pairs: specs.into_iter().map(Pair::new).collect(),
        }
    }

    /// Bring the pairs up to date with `devices`; call on every discovery
    /// event and at [`next_deadline`](Self::next_deadline).
    pub fn update(&mut self, devices: &BTreeMap<u32, NetDev>, now: Instant) -> Vec<Action> {
        // Names in explicit specs are reserved: an automatic pair must not
        // take them first.
        let reserved: BTreeSet<String> = self
            .pairs
            .iter()
            .filter_map(|p| p.spec.standby.clone())
            .collect();
        let mut actions = Vec::new();
        for i in 0..self.pairs.len() {
            let others = Others {
                claimed: self
                    .pairs
                    .iter()
                    .enumerate()
                    .filter(|(j, _)| *j != i)
                    .flat_map(|(_, p)| p.claims())
                    .collect(),
                macs: self
                    .pairs
                    .iter()
                    .enumerate()
                    .filter(|(j, _)| *j != i)
                    .filter_map(|(_, p)| p.mac)
                    .collect(),
                reserved: &reserved,
            };
            self.pairs[i].update(devices, now, &self.failback, &others, &mut actions);
        }
        actions
    }

    /// When `update` must run again for a primary waiting out its hold.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.pairs
            .iter()
            .filter_map(|p| p.pending.as_ref().map(Pending::attach_at))
            .min()
    }

    pub fn pairs(&self) -> Vec<PairView> {
        self.pairs.iter().map(Pair::view).collect()
    }
}

/// What the other pairs hold, as one pair updates.
struct Others<'a> {
    claimed: BTreeSet<u32>,
    macs: BTreeSet<MacAddr>,
    reserved: &'a BTreeSet<String>,
}

#[derive(Debug)]
struct Pending {
    member: Member,
    since: Instant,
    /// Fixed when the wait starts, so a deadline once given holds.
    hold: Duration,
}

impl Pending {
    fn attach_at(&self) -> Instant {
        self.since + self.hold
    }
}

#[derive(Debug)]
struct Pair {
    spec: PairSpec,
    /// Known once a standby was found (or configured); kept while it is
    /// away, so that only a standby with the same MAC takes its place.
    mac: Option<MacAddr>,
    standby: Option<Member>,
    /// The standby's [`NetDev::carrier_losses`] last acted on.
    standby_losses: u32,
    primary: Option<Member>,
    pending: Option<Pending>,
    /// The candidate last offered with [`Action::PrimarySeen`].
    seen: Option<u32>,
    /// When the attached primary went down, within the flap window.
    flaps: Vec<Instant>,
    /// A primary was removed since the last attach.
    replug: bool,
    /// The last primary detached because it went down, and when: if it is
    /// then removed, that was an unplug (a device goes down before it
    /// unregisters), not a flap.
    downed: Option<(u32, Instant)>,
    refused: BTreeMap<u32, (Member, String)>,
}

impl Pair {
    fn new(spec: PairSpec) -> Pair {
        Pair {
            mac: spec.primary_mac,
            spec,
            standby: None,
            standby_losses: 0,
            primary: None,
            pending: None,
            seen: None,
            flaps: Vec::new(),
            replug: false,
            downed: None,
            refused: BTreeMap::new(),
        }
    }

    fn claims(&self) -> impl Iterator<Item = u32> + '_ {
        let pending = self.pending.as_ref().map(|p| &p.member);
        [self.standby.as_ref(), self.primary.as_ref(), pending]
            .into_iter()
            .flatten()
            .map(|m| m.ifindex)
    }

    fn update(
        &mut self,
        devices: &BTreeMap<u32, NetDev>,
        now: Instant,
        failback: &Failback,
        others: &Others,
        actions: &mut Vec<Action>,
    ) {
        self.follow_renames(devices);
        self.update_standby(devices, others, actions);
        self.check_primary(devices, now, others, actions);
        self.check_returned(devices, others, actions);
        self.see_primary(devices, others, actions);
        self.settle_primary(devices, now, failback, others, actions);
        self.update_refused(devices, others, actions);
    }

    /// A rename changes nothing but what we show.
    fn follow_renames(&mut self, devices: &BTreeMap<u32, NetDev>) {
        let pending = self.pending.as_mut().map(|p| &mut p.member);
        for member in [self.standby.as_mut(), self.primary.as_mut(), pending]
            .into_iter()
            .flatten()
        {
            if let Some(dev) = devices.get(&member.ifindex) {
                member.ifname.clone_from(&dev.ifname);
            }
        }
    }

    fn update_standby(
        &mut self,
        devices: &BTreeMap<u32, NetDev>,
        others: &Others,
        actions: &mut Vec<Action>,
    ) {
        if let Some(standby) = &self.standby {
            if !devices.contains_key(&standby.ifindex) {
                actions.push(Action::StandbyLost {
                    pair: self.spec.name.clone(),
                    ifindex: standby.ifindex,
                });
                self.standby = None;
            }
        }
        if self.standby.is_none() {
            if let Some(dev) = self.find_standby(devices, others) {
                self.standby = Some(Member::of(dev));
                self.standby_losses = dev.carrier_losses;
                actions.push(Action::StandbyFound {
                    pair: self.spec.name.clone(),
                    dev: dev.clone(),
                });
            }
        }
        let Some(dev) = self.standby.as_ref().and_then(|s| devices.get(&s.ifindex)) else {
            return;
        };
        // The standby's MAC may change (a veth in a lab); follow it.
        self.mac = Some(self.spec.primary_mac.unwrap_or(dev.key_mac()));
        // Carrier regained, however briefly it was lost; a standby that
        // never had carrier since it was found only came up.
        if dev.carrier_losses != self.standby_losses && dev.up && dev.carrier {
            self.standby_losses = dev.carrier_losses;
            actions.push(Action::StandbyCarrierBack {
                pair: self.spec.name.clone(),
                ifindex: dev.ifindex,
            });
        }
    }

    fn find_standby<'d>(
        &self,
        devices: &'d BTreeMap<u32, NetDev>,
        others: &Others,
    ) -> Option<&'d NetDev> {
        let free = |d: &&NetDev| !others.claimed.contains(&d.ifindex) && !is_master(d);
        match &self.spec.standby {
            Some(name) => devices.values().filter(free).find(|d| d.ifname == *name),
            None => devices.values().filter(free).find(|d| {
                d.class == Class::Standby
                    && !others.reserved.contains(&d.ifname)
                    && !matches!(self.mac, Some(mac) if d.key_mac() != mac)
                    && !others.macs.contains(&d.key_mac())
            }),
        }
    }

    /// Could `dev` be this pair's primary?
    fn eligible(&self, dev: &NetDev, others: &Others) -> bool {
        let auto_ok = self.spec.standby.is_some() || dev.class == Class::PrimaryCandidate;
        Some(dev.key_mac()) == self.mac
            && self.standby.as_ref().map(|s| s.ifindex) != Some(dev.ifindex)
            && !others.claimed.contains(&dev.ifindex)
            && !is_master(dev)
            && dev.class != Class::Standby
            && auto_ok
    }

    /// An attached primary that is gone, down or no longer qualifies is
    /// detached now: the datapath must stop sending on it.
    fn check_primary(
        &mut self,
        devices: &BTreeMap<u32, NetDev>,
        now: Instant,
        others: &Others,
        actions: &mut Vec<Action>,
    ) {
        if let Some((ifindex, at)) = self.downed {
            if !devices.contains_key(&ifindex) {
                self.downed = None;
                self.flaps.retain(|t| *t != at);
                self.replug = true;
            }
        }
        let Some(primary) = &self.primary else { return };
        let reason = match devices.get(&primary.ifindex) {
            None => DetachReason::Removed,
            Some(dev) if !self.eligible(dev, others) => DetachReason::Refused,
            Some(dev) if !(dev.up && dev.carrier) => DetachReason::Down,
            Some(_) => return,
        };
        let ifindex = primary.ifindex;
        actions.push(Action::DetachPrimary {
            pair: self.spec.name.clone(),
            ifindex,
            reason,
        });
        self.primary = None;
        match reason {
            // An unplug is how a migration starts, not a flap: penalising it
            // would delay every failback after a migration.
            DetachReason::Removed => self.replug = true,
            DetachReason::Down => {
                self.flaps.push(now);
                self.downed = Some((ifindex, now));
            }
            DetachReason::Refused => {}
        }
    }

    /// After a removal, the first device that could be the primary again
    /// is a migration signal, whatever its state.
    fn check_returned(
        &mut self,
        devices: &BTreeMap<u32, NetDev>,
        others: &Others,
        actions: &mut Vec<Action>,
    ) {
        if !self.replug || self.primary.is_some() {
            return;
        }
        if let Some(dev) = devices.values().find(|d| self.eligible(d, others)) {
            self.replug = false;
            actions.push(Action::PrimaryReturned {
                pair: self.spec.name.clone(),
                ifindex: dev.ifindex,
            });
        }
    }

    /// Offer the candidate that is up, before its hold, to receive on.
    fn see_primary(
        &mut self,
        devices: &BTreeMap<u32, NetDev>,
        others: &Others,
        actions: &mut Vec<Action>,
    ) {
        if self.primary.is_some() || self.standby.is_none() {
            self.seen = None;
            return;
        }
        let Some(dev) = devices.values().find(|d| d.up && self.eligible(d, others)) else {
            return;
        };
        if self.seen != Some(dev.ifindex) {
            self.seen = Some(dev.ifindex);
            actions.push(Action::PrimarySeen {
                pair: self.spec.name.clone(),
                dev: dev.clone(),
            });
        }
    }

    /// Start, continue or finish a primary's hold.
    fn settle_primary(
        &mut self,
        devices: &BTreeMap<u32, NetDev>,
        now: Instant,
        failback: &Failback,
        others: &Others,
        actions: &mut Vec<Action>,
    ) {
        if self.primary.is_some() || self.standby.is_none() {
            // Nothing to wait for, or held until the standby exists.
            self.pending = None;
            return;
        }
        let ready = |d: &&NetDev| d.up && d.carrier && self.eligible(d, others);
        let still = self
            .pending
            .as_ref()
            .and_then(|p| devices.get(&p.member.ifindex))
            .filter(ready)
            .is_some();
        if !still {
            // The lowest ifindex registered first: the kernel's choice too.
            let next = devices.values().find(ready).map(Member::of);
            self.flaps
                .retain(|t| now.duration_since(*t) < failback.flap_window);
            let wait = failback.after(self.flaps.len());
            self.pending = next.map(|member| Pending {
                member,
                since: now,
                hold: wait,
            });
        }
        let Some(pending) = self.pending.take_if(|p| now >= p.attach_at()) else {
            return;
        };
        let Some(dev) = devices.get(&pending.member.ifindex) else {
            return;
        };
        self.primary = Some(pending.member);
        self.downed = None;
        actions.push(Action::AttachPrimary {
            pair: self.spec.name.clone(),
            dev: dev.clone(),
        });
    }

    /// A second primary while one is attached, or a second standby with the
    /// pair's MAC, is refused, as the kernel does; reported once each.
    fn update_refused(
        &mut self,
        devices: &BTreeMap<u32, NetDev>,
        others: &Others,
        actions: &mut Vec<Action>,
    ) {
        let mut refused = BTreeMap::new();
        if let Some(mac) = self.mac {
            for dev in devices.values() {
                let ours = [self.standby.as_ref(), self.primary.as_ref()]
                    .into_iter()
                    .flatten()
                    .any(|m| m.ifindex == dev.ifindex);
                if ours || others.claimed.contains(&dev.ifindex) {
                    continue;
                }
                let reason =
                    if let (Some(primary), true) = (&self.primary, self.eligible(dev, others)) {
                        format!(
                            "second primary with MAC {mac} for pair {}: {} is attached",
                            self.spec.name, primary.ifname
                        )
                    } else if dev.class == Class::Standby
                        && dev.key_mac() == mac
                        && self.standby.is_some()
                    {
                        format!("second standby with MAC {mac} for pair {}", self.spec.name)
                    } else {
                        continue;
                    };
                if !self.refused.contains_key(&dev.ifindex) {
                    actions.push(Action::Refused {
                        dev: dev.clone(),
                        reason: reason.clone(),
                    });
                }
                refused.insert(dev.ifindex, (Member::of(dev), reason));
            }
        }
        self.refused = refused;
    }

    fn view(&self) -> PairView {
        PairView {
            name: self.spec.name.clone(),
            mac: self.mac,
            standby: self.standby.clone(),
            primary: self.primary.clone(),
            pending: self
                .pending
                .as_ref()
                .map(|p| (p.member.clone(), p.attach_at())),
            refused: self.refused.values().cloned().collect(),
        }
    }
}

/// An upper device (net_failover's master, a bridge, a bond): never a
/// member of a pair.
fn is_master(dev: &NetDev) -> bool {
    dev.class == Class::FailoverMaster || !dev.lowers.is_empty()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::discovery::fake::{standby_features, FakeSysfs};
    use crate::discovery::{Devices, VIRTIO_NET};
    use vfailover_netstack::monitor::{LinkEvent, LinkState};

    const M1: MacAddr = MacAddr([0x52, 0x54, 0, 0, 0, 1]);
    const M2: MacAddr = MacAddr([0x52, 0x54, 0, 0, 0, 2]);

    fn netdev(ifindex: u32, name: &str, mac: MacAddr, class: Class) -> NetDev {
        NetDev {
            perm_mac: Some(mac),
            up: true,
            carrier: true,
            class,
            ..NetDev::new(ifindex, name.into(), mac)
        }
    }

    fn standby(ifindex: u32, name: &str, mac: MacAddr) -> NetDev {
        NetDev {
            driver: Some(VIRTIO_NET.into()),
            standby_bit: true,
            guest_announce: Some(true),
            ..netdev(ifindex, name, mac, Class::Standby)
        }
    }

    fn vf(ifindex: u32, name: &str, mac: MacAddr) -> NetDev {
        NetDev {
            driver: Some("ixgbevf".into()),
            on_pci: true,
            ..netdev(ifindex, name, mac, Class::PrimaryCandidate)
        }
    }

    fn veth(ifindex: u32, name: &str, mac: MacAddr) -> NetDev {
        NetDev {
            perm_mac: None,
            ..netdev(ifindex, name, mac, Class::Other)
        }
    }

    fn master(ifindex: u32, name: &str, mac: MacAddr, lowers: &[&str]) -> NetDev {
        NetDev {
            driver: Some(VIRTIO_NET.into()),
            standby_bit: true,
            lowers: lowers.iter().map(|s| s.to_string()).collect(),
            ..netdev(ifindex, name, mac, Class::FailoverMaster)
        }
    }

    /// A running link with MAC `M1`, as rtnetlink reports it.
    fn link(ifindex: u32, name: &str) -> LinkState {
        LinkState {
            ifindex,
            ifname: Some(name.into()),
            mac: Some(M1),
            perm_mac: Some(M1),
            up: true,
            carrier: true,
            notify_peers: false,
        }
    }

    fn auto(name: &str) -> PairSpec {
        PairSpec {
            name: name.into(),
            standby: None,
            primary_mac: None,
        }
    }

    /// A device table, a pairing and a clock in milliseconds.
    struct World {
        devices: BTreeMap<u32, NetDev>,
        pairing: Pairing,
        t0: Instant,
    }

    impl World {
        fn new(specs: Vec<PairSpec>) -> World {
            World {
                devices: BTreeMap::new(),
                pairing: Pairing::new(specs, Failback::default()),
                t0: Instant::now(),
            }
        }

        /// Pair `p0`; its standby 3 (`ens3`) and a VF 4 (`ens4`) both there,
        /// nothing run yet.
        fn standby_and_vf() -> World {
            let mut w = World::new(vec![auto("p0")]);
            w.add(standby(3, "ens3", M1));
            w.add(vf(4, "ens4", M1));
            w
        }

        /// [`standby_and_vf`](Self::standby_and_vf) run until the VF is
        /// attached, at 200 ms.
        fn attached() -> World {
            let mut w = World::standby_and_vf();
            w.at(0);
            assert_eq!(attached(&w.at(200)), [4]);
            w
        }

        fn add(&mut self, dev: NetDev) {
            self.devices.insert(dev.ifindex, dev);
        }

        fn remove(&mut self, ifindex: u32) {
            self.devices.remove(&ifindex);
        }

        fn running(&mut self, ifindex: u32, running: bool) {
            let dev = self.devices.get_mut(&ifindex).expect("device");
            dev.set_carrier(running);
        }

        fn at(&mut self, ms: u64) -> Vec<Action> {
            let now = self.t0 + Duration::from_millis(ms);
            self.pairing.update(&self.devices, now)
        }

        fn ms(&self, t: Instant) -> u64 {
            t.duration_since(self.t0).as_millis() as u64
        }

        fn view(&self) -> PairView {
            self.pairing.pairs().remove(0)
        }
    }

    /// The actions of one kind, reduced to what the test compares.
    fn pick<T>(actions: &[Action], f: impl Fn(&Action) -> Option<T>) -> Vec<T> {
        actions.iter().filter_map(f).collect()
    }

    fn returned(actions: &[Action]) -> Vec<u32> {
        pick(actions, |a| match a {
            Action::PrimaryReturned { ifindex, .. } => Some(*ifindex),
            _ => None,
        })
    }

    fn attached(actions: &[Action]) -> Vec<u32> {
        pick(actions, |a| match a {
            Action::AttachPrimary { dev, .. } => Some(dev.ifindex),
            _ => None,
        })
    }

    fn detached(actions: &[Action]) -> Vec<(u32, DetachReason)> {
        pick(actions, |a| match a {
            Action::DetachPrimary {
                ifindex, reason, ..
            } => Some((*ifindex, *reason)),
            _ => None,
        })
    }

    fn seen(actions: &[Action]) -> Vec<u32> {
        pick(actions, |a| match a {
            Action::PrimarySeen { dev, .. } => Some(dev.ifindex),
            _ => None,
        })
    }

    fn found(actions: &[Action]) -> Vec<u32> {
        pick(actions, |a| match a {
            Action::StandbyFound { dev, .. } => Some(dev.ifindex),
            _ => None,
        })
    }

    fn refused(actions: &[Action]) -> Vec<u32> {
        pick(actions, |a| match a {
            Action::Refused { dev, .. } => Some(dev.ifindex),
            _ => None,
        })
    }

    #[test]
    fn standby_first_then_primary() {
        let mut w = World::new(vec![auto("p0")]);
        w.add(standby(3, "ens3", M1));
        assert_eq!(found(&w.at(0)), [3]);
        assert_eq!(w.view().mac, Some(M1));
        assert_eq!(w.pairing.next_deadline(), None);

        w.add(vf(4, "ens4", M1));
        assert_eq!(
            w.at(1000),
            [Action::PrimarySeen {
                pair: "p0".into(),
                dev: vf(4, "ens4", M1)
            }],
            "held for the settle time, receiving only"
        );
        assert_eq!(w.pairing.next_deadline().map(|t| w.ms(t)), Some(1200));
        assert!(w.at(1199).is_empty(), "offered once");
        assert_eq!(attached(&w.at(1200)), [4]);
        assert_eq!(w.pairing.next_deadline(), None);
        let view = w.view();
        assert_eq!(view.standby.map(|m| m.ifindex), Some(3));
        assert_eq!(view.primary.map(|m| m.ifname), Some("ens4".into()));
        assert!(w.at(5000).is_empty(), "steady");
    }

    #[test]
    fn a_primary_is_offered_to_receive_once_it_is_up_and_again_after_a_replug() {
        let mut w = World::new(vec![auto("p0")]);
        w.add(standby(3, "ens3", M1));
        w.at(0);
        let mut down = vf(4, "ens4", M1);
        down.up = false;
        down.carrier = false;
        w.add(down);
        assert!(seen(&w.at(10)).is_empty(), "not while down");
        w.add(vf(4, "ens4", M1));
        assert_eq!(seen(&w.at(20)), [4]);
        assert_eq!(attached(&w.at(220)), [4]);
        w.remove(4);
        w.at(300);
        w.add(vf(5, "ens4", M1));
        assert_eq!(seen(&w.at(400)), [5], "the new device after an unplug");
    }

    #[test]
    fn primary_first_is_held_until_the_standby_exists() {
        let mut w = World::new(vec![auto("p0")]);
        w.add(vf(4, "ens4", M1));
        assert!(w.at(0).is_empty());
        assert!(w.at(5000).is_empty());
        assert_eq!(w.pairing.next_deadline(), None);
        w.add(standby(3, "ens3", M1));
        assert_eq!(found(&w.at(6000)), [3]);
        assert_eq!(attached(&w.at(6200)), [4]);
    }

    #[test]
    fn both_at_start() {
        let mut w = World::standby_and_vf();
        assert_eq!(found(&w.at(0)), [3]);
        assert_eq!(attached(&w.at(200)), [4]);
    }

    #[test]
    fn primary_not_ready_waits_for_carrier_and_restarts_its_hold() {
        let mut w = World::standby_and_vf();
        w.running(4, false);
        w.at(0);
        assert_eq!(w.pairing.next_deadline(), None);
        w.running(4, true);
        w.at(100);
        w.running(4, false);
        assert!(w.at(250).is_empty(), "lost carrier while held");
        w.running(4, true);
        assert!(w.at(300).is_empty());
        assert!(w.at(499).is_empty());
        assert_eq!(attached(&w.at(500)), [4]);
    }

    #[test]
    fn unplug_seen_as_down_then_removed_is_a_replug_not_a_flap() {
        let mut w = World::attached();
        // The kernel takes a device down before it unregisters it.
        w.running(4, false);
        assert_eq!(detached(&w.at(1000)), [(4, DetachReason::Down)]);
        w.remove(4);
        w.at(1001);
        w.add(vf(5, "ens4", M1));
        assert_eq!(returned(&w.at(2000)), [5], "a migration signal");
        // No flap penalty: the plain settle time.
        assert_eq!(attached(&w.at(2200)), [5]);
    }

    #[test]
    fn primary_replugged_is_a_migration_signal() {
        let mut w = World::attached();

        // Unplug: detached at once. The new VF gets a new ifindex.
        w.remove(4);
        assert_eq!(detached(&w.at(1000)), [(4, DetachReason::Removed)]);
        w.add(vf(5, "ens4", M1));
        // Signalled as soon as it registers, before it is up.
        w.running(5, false);
        assert_eq!(returned(&w.at(3000)), [5]);
        w.running(5, true);
        w.at(4000);
        assert_eq!(attached(&w.at(4200)), [5], "an unplug is not a flap");

        // A carrier flap is no migration.
        w.running(5, false);
        assert_eq!(detached(&w.at(5000)), [(5, DetachReason::Down)]);
        w.running(5, true);
        assert!(returned(&w.at(5100)).is_empty());
        let actions = w.at(5500);
        assert_eq!(attached(&actions), [5]);
        assert!(returned(&actions).is_empty());
    }

    #[test]
    fn standby_carrier_regained_is_a_migration_signal() {
        let back = |actions: &[Action]| {
            pick(actions, |a| match a {
                Action::StandbyCarrierBack { ifindex, .. } => Some(*ifindex),
                _ => None,
            })
        };
        let mut w = World::new(vec![auto("p0")]);
        // Found without carrier: coming up the first time is no flap.
        w.add(standby(3, "ens3", M1));
        w.running(3, false);
        assert_eq!(found(&w.at(0)), [3]);
        w.running(3, true);
        assert!(back(&w.at(100)).is_empty());

        // Lost: nothing yet; regained: one signal.
        w.running(3, false);
        assert!(back(&w.at(200)).is_empty());
        w.running(3, true);
        assert_eq!(back(&w.at(300)), [3]);
        assert!(back(&w.at(400)).is_empty(), "once");

        // Lost and regained between two updates (one batch of events).
        w.running(3, false);
        w.running(3, true);
        assert_eq!(back(&w.at(500)), [3]);
    }

    #[test]
    fn a_flapping_primary_is_held_off() {
        let mut w = World::attached();

        // Each flap within the window doubles the hold: 400, 800, ... ms.
        let mut t = 1000;
        for hold in [400, 800, 1600, 3200, 6400, 10_000, 10_000] {
            w.running(4, false);
            assert_eq!(detached(&w.at(t)), [(4, DetachReason::Down)], "at once");
            w.running(4, true);
            assert!(w.at(t + 10).is_empty());
            let deadline = w.pairing.next_deadline().map(|d| w.ms(d));
            assert_eq!(deadline, Some(t + 10 + hold));
            assert!(w.at(t + 10 + hold - 1).is_empty());
            assert_eq!(attached(&w.at(t + 10 + hold)), [4]);
            t += 10 + hold + 100;
        }

        // After a quiet flap window, one flap costs a single doubling again.
        t += 31_000;
        w.running(4, false);
        w.at(t);
        w.running(4, true);
        w.at(t + 10);
        assert_eq!(w.pairing.next_deadline().map(|d| w.ms(d)), Some(t + 410));
    }

    #[test]
    fn standby_removed_and_back() {
        let mut w = World::attached();

        w.remove(3);
        let actions = w.at(1000);
        assert_eq!(
            actions,
            [Action::StandbyLost {
                pair: "p0".into(),
                ifindex: 3
            }]
        );
        assert_eq!(w.view().primary.map(|m| m.ifindex), Some(4), "kept");

        // A standby with another MAC is not ours; one with ours is.
        w.add(standby(6, "ens6", M2));
        assert!(w.at(2000).is_empty());
        w.add(standby(7, "ens3", M1));
        assert_eq!(found(&w.at(3000)), [7]);
        assert!(detached(&w.at(3000)).is_empty());
    }

    #[test]
    fn explicit_standby_in_a_veth_lab() {
        let spec = PairSpec {
            name: "lab".into(),
            standby: Some("virtio0".into()),
            primary_mac: None,
        };
        let mut w = World::new(vec![spec]);
        w.add(veth(2, "virtio0", M1));
        w.add(veth(3, "vf0", M1));
        w.add(veth(4, "other", M2));
        assert_eq!(found(&w.at(0)), [2]);
        assert_eq!(attached(&w.at(200)), [3]);

        // Migration: unplug, standby briefly gone and back by name, replug.
        w.remove(3);
        assert_eq!(detached(&w.at(1000)), [(3, DetachReason::Removed)]);
        w.remove(2);
        assert!(matches!(
            &w.at(1100)[..],
            [Action::StandbyLost { ifindex: 2, .. }]
        ));
        w.add(veth(5, "virtio0", M1));
        assert_eq!(found(&w.at(1200)), [5]);
        w.add(veth(6, "vf0", M1));
        assert_eq!(returned(&w.at(1300)), [6]);
        assert_eq!(attached(&w.at(1500)), [6]);
    }

    #[test]
    fn explicit_standby_with_a_configured_primary_mac() {
        let spec = PairSpec {
            name: "lab".into(),
            standby: Some("sb".into()),
            primary_mac: Some(M2),
        };
        let mut w = World::new(vec![spec]);
        w.add(veth(2, "sb", M1));
        w.add(veth(3, "same-as-standby", M1));
        w.add(veth(4, "pri", M2));
        w.at(0);
        assert_eq!(attached(&w.at(200)), [4]);
        assert_eq!(w.view().mac, Some(M2));
    }

    #[test]
    fn a_second_candidate_is_refused_once() {
        let mut w = World::attached();
        w.add(vf(5, "ens5", M1));
        assert_eq!(refused(&w.at(300)), [5]);
        assert!(w.at(400).is_empty(), "reported once");
        assert_eq!(w.view().refused[0].0.ifindex, 5);

        // The attached one goes: the other may take its place, after a hold.
        w.remove(4);
        let actions = w.at(500);
        assert_eq!(detached(&actions), [(4, DetachReason::Removed)]);
        assert_eq!(returned(&actions), [5]);
        assert!(w.view().refused.is_empty());
        assert_eq!(attached(&w.at(700)), [5]);
    }

    #[test]
    fn two_candidates_at_once_take_the_lowest_ifindex() {
        let mut w = World::new(vec![auto("p0")]);
        w.add(standby(3, "ens3", M1));
        w.add(vf(6, "ens6", M1));
        w.add(vf(5, "ens5", M1));
        w.at(0);
        let actions = w.at(200);
        assert_eq!(attached(&actions), [5]);
        assert_eq!(refused(&actions), [6]);
    }

    #[test]
    fn a_second_standby_is_refused() {
        let mut w = World::new(vec![auto("p0"), auto("p1")]);
        w.add(standby(3, "ens3", M1));
        w.add(standby(4, "ens4", M1));
        let actions = w.at(0);
        assert_eq!(found(&actions), [3]);
        assert_eq!(refused(&actions), [4]);
        assert_eq!(w.pairing.pairs()[1].standby, None);
    }

    #[test]
    fn two_pairs_with_different_macs() {
        let mut w = World::new(vec![auto("a"), auto("b")]);
        w.add(vf(10, "vf-b", M2));
        w.add(standby(3, "sb-a", M1));
        w.add(standby(4, "sb-b", M2));
        assert_eq!(found(&w.at(0)), [3, 4]);
        w.add(vf(11, "vf-a", M1));
        w.at(100);
        let actions = w.at(300);
        assert_eq!(attached(&actions), [11, 10]);
        let pairs = w.pairing.pairs();
        assert_eq!(pairs[0].primary.as_ref().map(|m| m.ifindex), Some(11));
        assert_eq!(pairs[1].primary.as_ref().map(|m| m.ifindex), Some(10));
        assert_eq!(pairs[0].mac, Some(M1));
        assert_eq!(pairs[1].mac, Some(M2));
    }

    #[test]
    fn three_netdev_layout_never_pairs_the_master() {
        let mut w = World::new(vec![auto("p0")]);
        w.add(master(2, "eth0", M1, &["ens3", "ens4"]));
        w.add(standby(3, "ens3", M1));
        w.add(vf(4, "ens4", M1));
        assert_eq!(found(&w.at(0)), [3]);
        let actions = w.at(200);
        assert_eq!(attached(&actions), [4]);
        assert!(
            refused(&actions).is_empty(),
            "the master is not refused, just not a member"
        );
        // Explicitly naming the master as standby does not work either.
        let mut w = World::new(vec![PairSpec {
            name: "p".into(),
            standby: Some("eth0".into()),
            primary_mac: None,
        }]);
        w.add(master(2, "eth0", M1, &["ens3", "ens4"]));
        assert!(w.at(0).is_empty());
    }

    #[test]
    fn a_rename_changes_nothing() {
        let mut w = World::new(vec![auto("p0")]);
        w.add(standby(3, "ens3", M1));
        w.add(vf(4, "eth1", M1));
        w.at(0);
        w.devices.get_mut(&4).expect("vf").ifname = "ens4".into();
        assert_eq!(attached(&w.at(200)), [4], "renamed while held");
        w.devices.get_mut(&3).expect("standby").ifname = "sb0".into();
        assert!(w.at(300).is_empty());
        let view = w.view();
        assert_eq!(view.standby.map(|m| m.ifname), Some("sb0".into()));
        assert_eq!(view.primary.map(|m| m.ifname), Some("ens4".into()));
    }

    #[test]
    fn a_primary_that_stops_matching_is_detached_as_refused() {
        let mut w = World::new(vec![PairSpec {
            name: "lab".into(),
            standby: Some("sb".into()),
            primary_mac: None,
        }]);
        w.add(veth(2, "sb", M1));
        w.add(veth(3, "pri", M1));
        w.at(0);
        w.at(200);
        w.devices.get_mut(&3).expect("pri").mac = M2;
        assert_eq!(detached(&w.at(300)), [(3, DetachReason::Refused)]);
    }

    #[test]
    fn hold_is_capped_and_never_below_settle() {
        let hold = Failback {
            hold: Duration::from_secs(2),
            flap_window: Duration::from_secs(30),
            max_hold: Duration::from_secs(1),
        };
        assert_eq!(hold.after(0), Duration::from_secs(2));
        assert_eq!(hold.after(100), Duration::from_secs(2));
        assert_eq!(Failback::default().after(100), Duration::from_secs(10));
        assert_eq!(M1.to_string(), "52:54:00:00:00:01");
    }

    /// net_failover's three netdevs classified from a fake sysfs tree, the
    /// links arriving in every order (and all at once, as a dump at start).
    #[test]
    fn three_netdev_layout_from_sysfs_in_every_arrival_order() {
        let fake = FakeSysfs::create();
        let virtio = fake.virtio("ens3", 3, "0000:00:03.0", Some(&standby_features(false)));
        fake.netdev(&virtio, "eth0", 2);
        fake.pci_nic("ens4", 4, "0000:00:04.0", "e1000e");
        fake.enslave("eth0", "ens3");
        fake.enslave("eth0", "ens4");
        let links = [link(2, "eth0"), link(3, "ens3"), link(4, "ens4")];
        let orders = [
            [0, 1, 2],
            [0, 2, 1],
            [1, 0, 2],
            [1, 2, 0],
            [2, 0, 1],
            [2, 1, 0],
        ];
        for order in orders {
            let mut devices = Devices::new(fake.sysfs());
            let mut pairing = Pairing::new(vec![auto("p0")], Failback::default());
            let t0 = Instant::now();
            let mut actions = Vec::new();
            for (step, &i) in order.iter().enumerate() {
                devices.link_event(LinkEvent::Changed(links[i].clone()), &mut Vec::new());
                actions
                    .extend(pairing.update(devices.get(), t0 + Duration::from_millis(step as u64)));
            }
            actions.extend(pairing.update(devices.get(), t0 + Duration::from_secs(1)));
            assert_eq!(found(&actions), [3], "order {order:?}");
            assert_eq!(attached(&actions), [4], "order {order:?}");
            assert!(refused(&actions).is_empty(), "order {order:?}");
            assert_eq!(devices.get()[&3].guest_announce, Some(false));
        }

        // All at once, as the dump at start delivers them.
        let mut devices = Devices::new(fake.sysfs());
        devices.resync(&links, &mut Vec::new());
        let mut pairing = Pairing::new(vec![auto("p0")], Failback::default());
        let t0 = Instant::now();
        assert_eq!(found(&pairing.update(devices.get(), t0)), [3]);
        let actions = pairing.update(devices.get(), t0 + Duration::from_millis(200));
        assert_eq!(attached(&actions), [4]);

        // Unplug and replug through the same path: a migration signal.
        let mut out = Vec::new();
        devices.link_event(
            LinkEvent::Removed {
                ifindex: 4,
                ifname: None,
            },
            &mut out,
        );
        fake.remove("ens4");
        let actions = pairing.update(devices.get(), t0 + Duration::from_secs(1));
        assert_eq!(detached(&actions), [(4, DetachReason::Removed)]);
        fake.pci_nic("ens4", 5, "0000:00:05.0", "e1000e");
        devices.link_event(LinkEvent::Changed(link(5, "ens4")), &mut out);
        let actions = pairing.update(devices.get(), t0 + Duration::from_secs(2));
        assert_eq!(returned(&actions), [5]);
        let actions = pairing.update(devices.get(), t0 + Duration::from_millis(2200));
        assert_eq!(attached(&actions), [5]);
    }

    /// A standby and a VF from fake sysfs, the VF arriving first and still
    /// unclassified (mid-probe), then classified by a udev event.
    #[test]
    fn vf_classified_late_from_sysfs() {
        let fake = FakeSysfs::create();
        fake.virtio("ens3", 3, "0000:00:03.0", Some(&standby_features(true)));
        let mut devices = Devices::new(fake.sysfs());
        let mut pairing = Pairing::new(vec![auto("p0")], Failback::default());
        let t0 = Instant::now();
        devices.link_event(LinkEvent::Changed(link(4, "eth1")), &mut Vec::new());
        assert_eq!(devices.get()[&4].class, Class::Other);
        devices.link_event(LinkEvent::Changed(link(3, "ens3")), &mut Vec::new());
        assert_eq!(found(&pairing.update(devices.get(), t0)), [3]);
        assert!(pairing
            .update(devices.get(), t0 + Duration::from_secs(1))
            .is_empty());

        // udev renamed and the driver bound; sysfs now says PCI.
        fake.pci_nic("ens4", 4, "0000:00:04.0", "ixgbevf");
        let mut out = Vec::new();
        devices.link_event(LinkEvent::Changed(link(4, "ens4")), &mut out);
        assert_eq!(devices.get()[&4].class, Class::PrimaryCandidate);
        pairing.update(devices.get(), t0 + Duration::from_secs(2));
        let actions = pairing.update(devices.get(), t0 + Duration::from_millis(2200));
        assert_eq!(attached(&actions), [4]);
    }
}
