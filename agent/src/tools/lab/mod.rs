//! The namespace lab: a failover guest, a source and a destination host and a top-of-rack
//! switch, built from network namespaces, veths and bridges on any Linux box (root needed).
//! Integration tests use it, and so does `vfailover lab`; [`agent`] runs the real daemon in it.
//!
//! ```text
//!                 guest ns: vf0 (primary)      virtio0 (standby)     same MAC
//!                           10.213.0.10/24          |                (kernel address)
//!                              |                    |
//!   src ns: br0 [ h-vf0     h-virtio0    uplink ]      dst ns: br0 [ uplink ]
//!                                          |                           |
//!                          tor ns: br0 [ to-src        to-peer     to-dst ]   long FDB ageing
//!                                                         |
//!                                      peer ns: eth0 10.213.0.1/24, fd00:213::1/64
//! ```
//!
//! A migration is three steps, as QEMU does it with a failover pair: [`Lab::unplug`] deletes
//! `vf0`, [`Lab::migrate`] moves `virtio0`'s far end to the other host, [`Lab::replug`] creates
//! a new `vf0` with the same MAC there. The tor bridge keeps the guest's MAC on the old
//! uplink until its FDB entry ages out or the guest sends something: without an announce
//! the peer is blackholed ([`Lab::fdb_port`] shows where the switch thinks the MAC lives).
//! [`Lab::unplug_standby`] and [`Lab::replug_standby`] remove and re-create `virtio0` (same
//! MAC, new ifindex) on the host it is on: a standby lost and regained, no migration.
//!
//! Everything lives in namespaces named `vfl-<pid>-<rand>-<role>`, so runs never collide and
//! nothing is created in the caller's namespace; veths are created directly inside them.
//! [`Lab`]'s `Drop` deletes the namespaces (which destroys their veths and bridges), also
//! when a test panics. A process killed with SIGKILL cannot clean up: [`Lab::cleanup_stale`]
//! removes what such a process left behind.
//!
//! [`Lab::kernel_failover`] gives the guest kernel a failover device of its own, so that its
//! TCP can go through the same migration as the stack's: see [`KernelFailover`].
//!
//! Caveat: a namespace lives on, nameless, while a thread is still inside it or a socket
//! opened in it is still open. Join [`Lab::spawn_in`] threads and close their sockets before
//! the lab is dropped, or their veths outlive it.

pub mod agent;
pub mod netstat;

use std::collections::hash_map::RandomState;
use std::fmt;
use std::fs::File;
use std::hash::{BuildHasher, Hasher};
use std::io::Read;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime};

use std::os::fd::AsFd;

use anyhow::{anyhow, bail, Context, Result};
use nix::errno::Errno;
use nix::sched::{setns, CloneFlags};
use nix::sys::signal::kill;
use nix::unistd::{geteuid, Pid};
pub use vfailover_netstack::mac::MacAddr;
use vfailover_netstack::monitor::{LinkEvent, LinkMonitor};
use vfailover_netstack::sys::packet;
use vfailover_netstack::wire::announce;

use crate::capture;

/// The userspace stack's IPv4 address in the lab (prefix [`PREFIX_V4`]).
pub const STACK_V4: Ipv4Addr = Ipv4Addr::new(10, 213, 0, 20);
/// The userspace stack's IPv6 address in the lab (prefix [`PREFIX_V6`]).
pub const STACK_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x213, 0, 0, 0, 0, 0, 0x20);
/// The guest kernel's own address, on `vf0`: proves the XDP filter passes kernel traffic.
pub const GUEST_KERNEL_V4: Ipv4Addr = Ipv4Addr::new(10, 213, 0, 10);
/// The peer's IPv4 address.
pub const PEER_V4: Ipv4Addr = Ipv4Addr::new(10, 213, 0, 1);
/// The peer's IPv6 address.
pub const PEER_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x213, 0, 0, 0, 0, 0, 1);
/// Prefix length of the lab's IPv4 subnet.
pub const PREFIX_V4: u8 = 24;
/// Prefix length of the lab's IPv6 subnet.
pub const PREFIX_V6: u8 = 64;

/// The primary (VF) in the guest namespace.
pub const PRIMARY: &str = "vf0";
/// The standby (virtio-net) in the guest namespace.
pub const STANDBY: &str = "virtio0";
/// The host-side end of [`PRIMARY`], a port of the host's bridge.
pub const PRIMARY_FAR: &str = "h-vf0";
/// The host-side end of [`STANDBY`], a port of the host's bridge.
pub const STANDBY_FAR: &str = "h-virtio0";
/// The bridge in the src, dst and tor namespaces.
pub const BRIDGE: &str = "br0";
/// A host's link to the tor switch (in the src and dst namespaces).
pub const UPLINK: &str = "uplink";
/// The tor port towards the src host.
pub const TOR_SRC_PORT: &str = "to-src";
/// The tor port towards the dst host.
pub const TOR_DST_PORT: &str = "to-dst";
/// The tor port towards the peer.
pub const TOR_PEER_PORT: &str = "to-peer";
/// The peer's interface.
pub const PEER_IF: &str = "eth0";
/// Every lab namespace name starts with this, then `<pid>-<rand>-<role>`.
pub const NS_PREFIX: &str = "vfl-";

/// Where `ip netns` keeps its namespace handles (iproute2's NETNS_RUN_DIR).
const NETNS_DIR: &str = "/var/run/netns";
/// An upper bound for any one external command; `ip` takes milliseconds.
const CMD_TIMEOUT: Duration = Duration::from_secs(30);

/// A random locally administered unicast MAC.
fn random_local_mac(bits: u64) -> MacAddr {
    let b = bits.to_be_bytes();
    MacAddr([0x02, b[3], b[4], b[5], b[6], b[7]])
}

/// The lab's namespaces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Ns {
    /// The VM: `vf0` and `virtio0`; the agent runs here.
    Guest,
    /// The source host: the guest's NICs start here.
    Src,
    /// The destination host of a migration.
    Dst,
    /// The top-of-rack switch between the hosts and the peer.
    Tor,
    /// A host on the wire that talks to the guest.
    Peer,
}

impl Ns {
    /// All namespaces, in creation order.
    pub const ALL: [Ns; 5] = [Ns::Guest, Ns::Src, Ns::Dst, Ns::Tor, Ns::Peer];

    /// The role part of the namespace name.
    pub fn suffix(self) -> &'static str {
        match self {
            Ns::Guest => "guest",
            Ns::Src => "src",
            Ns::Dst => "dst",
            Ns::Tor => "tor",
            Ns::Peer => "peer",
        }
    }
}

impl fmt::Display for Ns {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.suffix())
    }
}

/// How to build a [`Lab`].
#[derive(Debug, Clone)]
pub struct LabOptions {
    /// How long the tor bridge remembers which port a MAC lives on (Linux' unit is 10 ms).
    /// Default 300 s: long enough that a migration without an announce stays blackholed
    /// for the whole test.
    pub fdb_ageing: Duration,
    /// The failover pair's MAC; `None`: a random locally administered one.
    pub mac: Option<MacAddr>,
}

impl Default for LabOptions {
    fn default() -> LabOptions {
        LabOptions {
            fdb_ageing: Duration::from_secs(300),
            mac: None,
        }
    }
}

/// Where the guest's NICs are plugged right now.
struct State {
    /// Namespaces this lab made and has not deleted yet.
    namespaces: Vec<String>,
    /// The host holding `vf0`'s far end; `None` while unplugged.
    primary: Option<Ns>,
    /// The host holding `virtio0`'s far end.
    standby: Ns,
    /// Whether `virtio0` exists (see [`Lab::unplug_standby`]).
    standby_plugged: bool,
    /// Whether a [`KernelFailover`] is up (it may have moved the kernel's address to
    /// `virtio0`).
    kernel_failover: bool,
}

/// A running lab. All methods take `&self`, so threads can share it (one migrates while
/// another moves traffic); operations are serialised internally.
pub struct Lab {
    prefix: String,
    mac: MacAddr,
    state: Mutex<State>,
}

impl Lab {
    /// Builds the whole topology. Needs root and iproute2 (`ip`, `bridge`) and `ethtool`.
    /// On error, whatever was already created is removed again.
    pub fn create(opts: LabOptions) -> Result<Lab> {
        preflight()?;
        let ageing_cs = u32::try_from(opts.fdb_ageing.as_millis() / 10)
            .context("fdb_ageing is too long for the kernel (u32 centiseconds)")?;
        let mac = opts.mac.unwrap_or_else(|| random_local_mac(random_u64()));
        if mac.is_multicast() {
            bail!("the lab MAC {mac} is a multicast address; a NIC needs a unicast one");
        }
        let prefix = format!(
            "{NS_PREFIX}{}-{:06x}",
            std::process::id(),
            random_u64() & 0xff_ffff
        );
        let lab = Lab {
            prefix,
            mac,
            state: Mutex::new(State {
                namespaces: Vec::new(),
                primary: None,
                standby: Ns::Src,
                standby_plugged: false,
                kernel_failover: false,
            }),
        };
        // On error `lab` is dropped here, which deletes the namespaces made so far.
        lab.build(ageing_cs)
            .and_then(|()| lab.settle())
            .with_context(|| format!("building the lab {}", lab.prefix))?;
        Ok(lab)
    }

    fn build(&self, ageing_cs: u32) -> Result<()> {
        for ns in Ns::ALL {
            let name = self.ns_name(ns);
            run_checked(Command::new("ip").args(["netns", "add", &name]))?;
            self.state().namespaces.push(name);
        }
        // Before any link exists, so that `default` covers every link made later.
        for ns in Ns::ALL {
            let mut sysctls = Vec::new();
            if ns != Ns::Peer {
                // Kernel IPv6 chatter (DAD, router solicitations) sent through the standby
                // would move the switch's entry for the guest MAC; bridges would chatter too.
                // The userspace stack does its own IPv6.
                sysctls.push(("net/ipv6/conf/all/disable_ipv6", "1"));
                sysctls.push(("net/ipv6/conf/default/disable_ipv6", "1"));
            }
            if ns == Ns::Guest {
                // Answer ARP only on the interface holding the address (vf0), never through
                // virtio0, and pick a source address from the outgoing interface.
                sysctls.push(("net/ipv4/conf/all/arp_ignore", "1"));
                sysctls.push(("net/ipv4/conf/all/arp_announce", "2"));
            }
            self.in_ns(ns, || write_sysctls(&sysctls))?
                .with_context(|| format!("sysctls in {}", self.ns_name(ns)))?;
        }
        for ns in [Ns::Guest, Ns::Peer] {
            self.ip(ns, &["link", "set", "lo", "up"])?;
        }

        for (ns, ageing) in [(Ns::Src, None), (Ns::Dst, None), (Ns::Tor, Some(ageing_cs))] {
            let ageing = ageing.map(|cs| cs.to_string());
            let mut args = vec!["link", "add", BRIDGE, "type", "bridge"];
            args.extend([
                "stp_state",
                "0",
                "forward_delay",
                "0",
                "mcast_snooping",
                "0",
            ]);
            if let Some(ageing) = &ageing {
                args.extend(["ageing_time", ageing]);
            }
            self.ip(ns, &args)?;
            self.ip(ns, &["link", "set", BRIDGE, "up"])?;
        }

        for (host, port) in [(Ns::Src, TOR_SRC_PORT), (Ns::Dst, TOR_DST_PORT)] {
            self.veth(Ns::Tor, port, None, host, UPLINK)?;
            self.bridge_port(Ns::Tor, port)?;
            self.bridge_port(host, UPLINK)?;
        }

        self.veth(Ns::Tor, TOR_PEER_PORT, None, Ns::Peer, PEER_IF)?;
        self.bridge_port(Ns::Tor, TOR_PEER_PORT)?;
        // The peer stands for a host on a real wire: MTU-sized frames with real checksums,
        // which is what a userspace stack behind AF_XDP gets to see.
        self.exec(
            Ns::Peer,
            &[
                "ethtool", "-K", PEER_IF, "tso", "off", "gso", "off", "gro", "off", "tx", "off",
            ],
        )?;
        self.ip(Ns::Peer, &["link", "set", PEER_IF, "up"])?;
        let v4 = format!("{PEER_V4}/{PREFIX_V4}");
        let v6 = format!("{PEER_V6}/{PREFIX_V6}");
        self.ip(Ns::Peer, &["addr", "add", &v4, "dev", PEER_IF])?;
        self.ip(Ns::Peer, &["addr", "add", &v6, "dev", PEER_IF, "nodad"])?;

        self.plug_standby(Ns::Src)?;
        self.state().standby_plugged = true;
        self.plug_primary(Ns::Src)?;
        self.state().primary = Some(Ns::Src);
        Ok(())
    }

    /// `ip -n A link add a [address MAC] type veth peer name b netns B`: both ends are born
    /// inside lab namespaces, never in the caller's.
    fn veth(&self, ns_a: Ns, a: &str, mac: Option<MacAddr>, ns_b: Ns, b: &str) -> Result<()> {
        let mac = mac.map(|m| m.to_string());
        let mut args = vec!["link", "add", a];
        if let Some(mac) = &mac {
            args.extend(["address", mac]);
        }
        let peer_ns = self.ns_name(ns_b);
        args.extend(["mtu", "1500", "type", "veth", "peer", "name", b]);
        args.extend(["mtu", "1500", "netns", &peer_ns]);
        self.ip(ns_a, &args).map(drop)
    }

    fn bridge_port(&self, ns: Ns, ifname: &str) -> Result<()> {
        self.ip(ns, &["link", "set", ifname, "master", BRIDGE, "up"])
            .map(drop)
    }

    /// A new `virtio0` with the pair's MAC, far end on `host`'s bridge.
    fn plug_standby(&self, host: Ns) -> Result<()> {
        self.veth(Ns::Guest, STANDBY, Some(self.mac), host, STANDBY_FAR)?;
        self.bridge_port(host, STANDBY_FAR)?;
        self.ip(Ns::Guest, &["link", "set", STANDBY, "up"])
            .map(drop)
    }

    /// A new `vf0` with the pair's MAC, far end on `host`'s bridge, kernel address on it.
    fn plug_primary(&self, host: Ns) -> Result<()> {
        self.veth(Ns::Guest, PRIMARY, Some(self.mac), host, PRIMARY_FAR)?;
        self.bridge_port(host, PRIMARY_FAR)?;
        self.ip(Ns::Guest, &["link", "set", PRIMARY, "up"])?;
        self.kernel_address_on(PRIMARY)
    }

    /// Puts the guest kernel's address on `ifname` (`replace`: also if it is there already).
    fn kernel_address_on(&self, ifname: &str) -> Result<()> {
        kernel_address_in(&self.ns_name(Ns::Guest), ifname)
    }

    /// Hot-unplugs the primary: deletes `vf0` in the guest (its far end goes with it).
    pub fn unplug(&self) -> Result<()> {
        let mut st = self.state();
        if st.primary.is_none() {
            bail!("the primary {PRIMARY} is already unplugged");
        }
        self.ip(Ns::Guest, &["link", "del", PRIMARY])?;
        st.primary = None;
        Ok(())
    }

    /// Moves `virtio0`'s far end to the other host (src → dst the first time) and enslaves
    /// it to that host's bridge. The same interface moves, so the guest sees a carrier flap
    /// on the standby, not a new device. The primary must be unplugged first, as QEMU
    /// does: a VF cannot migrate.
    pub fn migrate(&self) -> Result<()> {
        let mut st = self.state();
        if st.primary.is_some() {
            bail!("unplug the primary {PRIMARY} before migrating: a VF cannot migrate");
        }
        if !st.standby_plugged {
            bail!("the standby {STANDBY} is unplugged: nothing to migrate");
        }
        let from = st.standby;
        let to = if from == Ns::Src { Ns::Dst } else { Ns::Src };
        let to_name = self.ns_name(to);
        self.ip(from, &["link", "set", STANDBY_FAR, "netns", &to_name])?;
        // Moving a link out of a namespace takes it down and out of its bridge.
        self.bridge_port(to, STANDBY_FAR)?;
        st.standby = to;
        drop(st);
        self.settle()
    }

    /// Plugs a new primary: `vf0` with the same MAC and the guest kernel address, far end
    /// on the bridge of the host the standby is on now.
    pub fn replug(&self) -> Result<()> {
        let mut st = self.state();
        if st.primary.is_some() {
            bail!("the primary {PRIMARY} is still plugged");
        }
        let host = st.standby;
        if let Err(e) = self.plug_primary(host) {
            // Leave no half-made vf0 behind, so a retry can start clean.
            let _ = self.ip(Ns::Guest, &["link", "del", PRIMARY]);
            return Err(e);
        }
        st.primary = Some(host);
        drop(st);
        self.settle()
    }

    /// Hot-unplugs the standby: deletes `virtio0` in the guest (its far end goes with it).
    /// Not part of a migration; a guest whose virtio-net device was removed.
    pub fn unplug_standby(&self) -> Result<()> {
        let mut st = self.state();
        if !st.standby_plugged {
            bail!("the standby {STANDBY} is already unplugged");
        }
        self.ip(Ns::Guest, &["link", "del", STANDBY])?;
        st.standby_plugged = false;
        Ok(())
    }

    /// Plugs a new standby: `virtio0` with the same MAC (a new ifindex), far end on the
    /// bridge of the host the standby was on.
    pub fn replug_standby(&self) -> Result<()> {
        let mut st = self.state();
        if st.standby_plugged {
            bail!("the standby {STANDBY} is still plugged");
        }
        if let Err(e) = self.plug_standby(st.standby) {
            let _ = self.ip(Ns::Guest, &["link", "del", STANDBY]);
            return Err(e);
        }
        st.standby_plugged = true;
        drop(st);
        self.settle()
    }

    /// Gives the guest kernel a failover of its own ([`KernelFailover`]): its address follows
    /// the NIC in use. Both NICs must be plugged. Drive the migration through the returned
    /// [`KernelFailover`]; dropping it (or [`KernelFailover::stop`]) leaves the address on
    /// `vf0` alone, as the lab has it.
    pub fn kernel_failover(&self) -> Result<KernelFailover<'_>> {
        {
            let mut st = self.state();
            if st.kernel_failover {
                bail!("the guest kernel's failover stand-in is already up");
            }
            if st.primary.is_none() || !st.standby_plugged {
                bail!("the kernel's failover stand-in needs {PRIMARY} and {STANDBY} plugged");
            }
            st.kernel_failover = true;
        }
        Ok(KernelFailover { lab: self })
    }

    /// Wait (at most 3 s) until every link of the lab is operationally up.
    /// The kernel's linkwatch marks a link running up to a second after its
    /// carrier came; until then its qdisc drops what it is given, so a
    /// frame sent through a fresh bridge port could vanish.
    fn settle(&self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(3);
        loop {
            let mut waiting = Vec::new();
            for ns in Ns::ALL {
                let links = self.ip(ns, &["-o", "link", "show"])?;
                waiting.extend(
                    links
                        .lines()
                        .filter(|l| !l.contains(": lo:") && !l.contains(" state UP "))
                        .filter_map(|l| l.split(": ").nth(1).map(|name| format!("{ns}:{name}"))),
                );
            }
            if waiting.is_empty() {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("links not up after 3 s: {}", waiting.join(", "));
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// The host holding the primary's far end, `None` while it is unplugged.
    pub fn primary_host(&self) -> Option<Ns> {
        self.state().primary
    }

    /// The host holding the standby's far end.
    pub fn standby_host(&self) -> Ns {
        self.state().standby
    }

    /// The MAC shared by `vf0` and `virtio0`.
    pub fn mac(&self) -> MacAddr {
        self.mac
    }

    /// The run's unique name prefix, `vfl-<pid>-<rand>`.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The full name of one of the lab's namespaces, for `ip netns exec` and friends.
    pub fn ns_name(&self, ns: Ns) -> String {
        format!("{}-{}", self.prefix, ns.suffix())
    }

    /// The namespaces this lab made and has not deleted yet.
    pub fn namespaces(&self) -> Vec<String> {
        self.state().namespaces.clone()
    }

    /// Runs `f` on a thread that has entered `ns` (network namespaces are per thread),
    /// and waits for it. A panic in `f` is passed on to the caller.
    pub fn in_ns<F, R>(&self, ns: Ns, f: F) -> Result<R>
    where
        F: FnOnce() -> R + Send,
        R: Send,
    {
        let file = self.ns_file(ns)?;
        thread::scope(|s| {
            let thread = thread::Builder::new()
                .name(format!("lab-{ns}"))
                .spawn_scoped(s, move || -> Result<R> {
                    enter(&file, ns)?;
                    Ok(f())
                })
                .context("spawning a lab thread")?;
            match thread.join() {
                Ok(result) => result,
                Err(panic) => std::panic::resume_unwind(panic),
            }
        })
    }

    /// Starts `f` on a thread inside `ns` and returns once the thread is in there. Join it
    /// before the lab is dropped (see the module docs).
    pub fn spawn_in<F, R>(&self, ns: Ns, f: F) -> Result<JoinHandle<R>>
    where
        F: FnOnce() -> R + Send + 'static,
        R: Send + 'static,
    {
        let file = self.ns_file(ns)?;
        let (entered_tx, entered_rx) = mpsc::sync_channel(1);
        let handle = thread::Builder::new()
            .name(format!("lab-{ns}"))
            .spawn(move || {
                let entered = enter(&file, ns);
                let ok = entered.is_ok();
                let _ = entered_tx.send(entered);
                if !ok {
                    // No R to return; the caller already has the error. resume_unwind ends
                    // the thread without running the panic hook (no noise on stderr).
                    std::panic::resume_unwind(Box::new("could not enter the namespace"));
                }
                f()
            })
            .context("spawning a lab thread")?;
        entered_rx
            .recv()
            .context("the lab thread died before entering its namespace")??;
        Ok(handle)
    }

    /// `ip netns exec <ns> args...`; an error (with the command and its stderr) unless the
    /// command exits 0.
    pub fn exec(&self, ns: Ns, args: &[&str]) -> Result<Output> {
        let name = self.ns_name(ns);
        run_checked(Command::new("ip").args(["netns", "exec", &name]).args(args))
    }

    /// `ip -n <ns> args...`, returning stdout; an error (with the command and its stderr)
    /// unless `ip` exits 0.
    pub fn ip(&self, ns: Ns, args: &[&str]) -> Result<String> {
        ip_in(&self.ns_name(ns), args)
    }

    /// Pings `to` from `from`, `count` probes (1..=100) 200 ms apart, each waiting at most
    /// 1 s for its reply. `Ok(true)` if any reply came back, `Ok(false)` if none did.
    pub fn ping(&self, from: Ns, to: IpAddr, count: u32) -> Result<bool> {
        let count = count.clamp(1, 100).to_string();
        let to = to.to_string();
        let name = self.ns_name(from);
        let mut cmd = Command::new("ip");
        cmd.args([
            "netns", "exec", &name, "ping", "-n", "-q", "-i", "0.2", "-W", "1",
        ]);
        cmd.args(["-c", &count, &to]);
        let out = run(&mut cmd, CMD_TIMEOUT)?;
        match out.status.code() {
            Some(0) => Ok(true),
            // iputils: 1 means no reply, anything else is an error.
            Some(1) => Ok(false),
            _ => Err(command_error(&cmd, &out)),
        }
    }

    /// The names of the links in `ns` (`vf0`, not `vf0@if5`).
    pub fn links(&self, ns: Ns) -> Result<Vec<String>> {
        Ok(parse_link_names(&self.ip(ns, &["-o", "link", "show"])?))
    }

    /// The current MAC of `ifname` in `ns`.
    pub fn link_mac(&self, ns: Ns, ifname: &str) -> Result<MacAddr> {
        let text = self.ip(ns, &["-o", "link", "show", "dev", ifname])?;
        let words: Vec<&str> = text.split_whitespace().collect();
        let mac = words.windows(2).find(|w| w[0] == "link/ether");
        let mac = mac
            .ok_or_else(|| anyhow!("no link/ether in `ip link show dev {ifname}`: {text}"))?[1]
            .parse()?;
        Ok(mac)
    }

    /// The port of `ns`'s bridge on which `mac` is learned, if any (from
    /// `bridge -n <ns> fdb show br br0`). On tor this shows where the switch sends the
    /// guest's frames: `to-src` after a migration means the peer is blackholed.
    pub fn fdb_port(&self, ns: Ns, mac: MacAddr) -> Result<Option<String>> {
        let name = self.ns_name(ns);
        let out =
            run_checked(Command::new("bridge").args(["-n", &name, "fdb", "show", "br", BRIDGE]))?;
        Ok(parse_fdb_port(&String::from_utf8_lossy(&out.stdout), mac))
    }

    /// Deletes every namespace the lab made (their veths and bridges go with them).
    /// Idempotent; `Drop` calls it and prints what failed.
    pub fn teardown(&self) -> Result<()> {
        let mut st = self.state();
        let mut failed = Vec::new();
        while let Some(name) = st.namespaces.pop() {
            if let Err(e) = delete_netns(&name) {
                failed.push((name, e));
            }
        }
        if failed.is_empty() {
            return Ok(());
        }
        let msg = failed
            .iter()
            .map(|(name, e)| format!("{name}: {e:#}"))
            .collect::<Vec<_>>()
            .join("; ");
        // Keep them, so a later call can try again.
        st.namespaces
            .extend(failed.into_iter().map(|(name, _)| name));
        bail!("could not remove lab namespaces: {msg}")
    }

    /// Removes the namespaces of labs whose process no longer runs: `vfl-<pid>-*` where no
    /// process `<pid>` exists (left by a SIGKILL, which skips `Drop`). Labs of running
    /// processes, this one included, are left alone. Returns the names removed. PIDs are
    /// judged in the caller's PID namespace: do not share `/var/run/netns` with a container
    /// that runs labs in its own PID namespace.
    pub fn cleanup_stale() -> Result<Vec<String>> {
        let entries = match std::fs::read_dir(NETNS_DIR) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e).with_context(|| format!("reading {NETNS_DIR}")),
        };
        let mut removed = Vec::new();
        for entry in entries {
            let name = entry
                .with_context(|| format!("reading {NETNS_DIR}"))?
                .file_name()
                .to_string_lossy()
                .into_owned();
            let Some(pid) = lab_pid(&name) else { continue };
            if pid == std::process::id() {
                continue;
            }
            let Ok(raw) = i32::try_from(pid) else {
                continue;
            };
            // Signal 0 checks existence; EPERM would mean it exists but is not ours.
            if kill(Pid::from_raw(raw), None) == Err(Errno::ESRCH) {
                delete_netns(&name)?;
                removed.push(name);
            }
        }
        Ok(removed)
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves the state as valid as anything else:
        // keep going, so that teardown still works.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn ns_file(&self, ns: Ns) -> Result<File> {
        let path = netns_path(&self.ns_name(ns));
        File::open(&path)
            .with_context(|| format!("opening {} (was the lab torn down?)", path.display()))
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if let Err(e) = self.teardown() {
            eprintln!("vfailover lab {}: {e:#}", self.prefix);
        }
    }
}

/// The guest kernel's failover in the lab: a stand-in for `net_failover` (which the lab
/// cannot have: its NICs are veths, not a virtio-net device with `VIRTIO_NET_F_STANDBY`), so
/// that the kernel's own TCP goes through the same migration as the stack's.
///
/// It moves the kernel's address to the NIC in use, which Linux TCP follows: a socket is
/// bound to an address, not to a device, and a packet for a local address is taken on any
/// device. Why not a device over both NICs: the lab machine's kernel may have no bonding or
/// team module, and a bridge over both either loops frames through the hosts or, with the
/// standby's port disabled, drops what the host still sends there (`net_failover` takes
/// frames from both slaves); tried, and the kernel's stream stalled for good at the replug.
///
/// - [`KernelFailover::unplug`]: the address goes with `vf0`; a watcher hears rtnetlink say
///   so and puts it on `virtio0`. `net_failover` switches inside the kernel at once; the
///   watcher takes a few milliseconds (it runs `ip`), and what the kernel sends meanwhile
///   has no route.
/// - [`KernelFailover::migrate`]: after [`Lab::migrate`], one gratuitous ARP for the address
///   on `virtio0`, as `netdev_notify_peers` sends for a device with
///   `VIRTIO_NET_F_GUEST_ANNOUNCE`. (The real one goes out on the virtio netdev, which has
///   no address, so it announces nothing: this favours the kernel.)
/// - [`KernelFailover::replug`]: [`Lab::replug`] puts the address on the new `vf0`, as
///   always; then it leaves `virtio0`, so the kernel sends through `vf0`.
///
/// Unlike `net_failover`, the kernel resolves the peer's MAC again on each NIC: one ARP
/// round trip, well under a millisecond here.
pub struct KernelFailover<'a> {
    lab: &'a Lab,
}

impl KernelFailover<'_> {
    /// Unplugs `vf0` ([`Lab::unplug`]) while a watcher in the guest namespace waits for
    /// rtnetlink to say so and then puts the kernel's address on `virtio0`. Returns the
    /// watcher's reaction time, from the event to the address being there.
    pub fn unplug(&self) -> Result<Duration> {
        let ns_name = self.lab.ns_name(Ns::Guest);
        let watcher = self.lab.spawn_in(Ns::Guest, move || -> Result<_> {
            let Some(heard) = wait_for_loss(PRIMARY)? else {
                return Ok(None);
            };
            kernel_address_in(&ns_name, STANDBY)?;
            Ok(Some(
                SystemTime::now().duration_since(heard).unwrap_or_default(),
            ))
        })?;
        let unplugged = self.lab.unplug();
        let reaction = watcher
            .join()
            .map_err(|_| anyhow!("the failover stand-in's watcher panicked"))?;
        unplugged?;
        reaction?.ok_or_else(|| anyhow!("the watcher heard nothing of {PRIMARY} going in 5 s"))
    }

    /// Migrates ([`Lab::migrate`]), then announces the kernel's address: one gratuitous ARP
    /// on `virtio0`.
    pub fn migrate(&self) -> Result<()> {
        self.lab.migrate()?;
        let garp = announce::gratuitous_arp(self.lab.mac, GUEST_KERNEL_V4);
        self.lab.in_ns(Ns::Guest, move || -> Result<()> {
            let socket = capture::open(STANDBY)?;
            packet::send(socket.as_fd(), &garp)
                .with_context(|| format!("sending a gratuitous ARP on {STANDBY}"))
        })?
    }

    /// Replugs ([`Lab::replug`], which puts the kernel's address on the new `vf0`), then
    /// takes the address off `virtio0`.
    pub fn replug(&self) -> Result<()> {
        self.lab.replug()?;
        self.off_standby()
    }

    /// Takes the stand-in down: the kernel's address stays on `vf0` alone (if plugged; else
    /// [`Lab::replug`] will put it there). Dropping it does the same.
    pub fn stop(self) -> Result<()> {
        self.restore()
    }

    fn off_standby(&self) -> Result<()> {
        let addr = kernel_cidr();
        let on_standby = self
            .lab
            .ip(Ns::Guest, &["-o", "addr", "show", "dev", STANDBY])?;
        if on_standby.contains(&format!(" {addr} ")) {
            self.lab
                .ip(Ns::Guest, &["addr", "del", &addr, "dev", STANDBY])?;
        }
        Ok(())
    }

    /// Idempotent: the lab's flag says whether there is anything left to undo.
    fn restore(&self) -> Result<()> {
        let lab = self.lab;
        let mut st = lab.state();
        if !st.kernel_failover {
            return Ok(());
        }
        if st.primary.is_some() {
            lab.kernel_address_on(PRIMARY)?;
        }
        if st.standby_plugged {
            self.off_standby()?;
        }
        st.kernel_failover = false;
        Ok(())
    }
}

impl Drop for KernelFailover<'_> {
    fn drop(&mut self) {
        if let Err(e) = self.restore() {
            eprintln!("vfailover lab {}: {e:#}", self.lab.prefix);
        }
    }
}

/// Wait (at most 5 s) for rtnetlink to say `ifname` went down or away in
/// this thread's namespace; returns when it did. Run it with
/// [`Lab::spawn_in`] before deleting the link: `spawn_in` returns once the
/// thread is inside the namespace; the listener opens a moment later,
/// which the milliseconds that `ip link del` takes to start cover.
pub fn wait_for_loss(ifname: &str) -> Result<Option<SystemTime>> {
    let mut monitor = LinkMonitor::open().context("opening an rtnetlink listener")?;
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        let mut seen = None;
        monitor.read(|event| {
            let name = match event {
                LinkEvent::Removed { ifname, .. } => ifname,
                LinkEvent::Changed(state) if !(state.up && state.carrier) => state.ifname,
                _ => None,
            };
            if name.as_deref() == Some(ifname) && seen.is_none() {
                seen = Some(SystemTime::now());
            }
        })?;
        if seen.is_some() {
            return Ok(seen);
        }
        monitor.wait(Duration::from_millis(50))?;
    }
    Ok(None)
}

/// Whether a test that needs root (namespaces, XDP) can run here. Outside
/// CI a non-root run skips with a message; under `CI=true` skipping is a
/// failure, so this panics instead.
pub fn root_or_skip() -> bool {
    if geteuid().is_root() {
        return true;
    }
    assert_ne!(
        std::env::var("CI").as_deref(),
        Ok("true"),
        "this test needs root (network namespaces, XDP), and CI=true does not allow skipping it"
    );
    eprintln!("skipping: this test needs root (network namespaces, XDP)");
    false
}

fn preflight() -> Result<()> {
    if !geteuid().is_root() {
        bail!(
            "the lab needs root: creating network namespaces, veths and bridges needs \
             CAP_SYS_ADMIN and CAP_NET_ADMIN (run as root)"
        );
    }
    for (tool, arg, package) in [
        ("ip", "-V", "iproute2"),
        ("bridge", "-V", "iproute2"),
        ("ethtool", "--version", "ethtool"),
    ] {
        match Command::new(tool).arg(arg).output() {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                bail!("the lab needs `{tool}`, which is not in PATH: install {package}")
            }
            Err(e) => return Err(e).with_context(|| format!("running `{tool} {arg}`")),
        }
    }
    Ok(())
}

fn netns_path(name: &str) -> PathBuf {
    Path::new(NETNS_DIR).join(name)
}

/// The pid in a lab namespace name `vfl-<pid>-<rand>-<role>`.
fn lab_pid(name: &str) -> Option<u32> {
    let rest = name.strip_prefix(NS_PREFIX)?;
    let (pid, rest) = rest.split_once('-')?;
    if rest.is_empty() {
        return None;
    }
    pid.parse().ok()
}

fn delete_netns(name: &str) -> Result<()> {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "del", name]);
    let out = run(&mut cmd, CMD_TIMEOUT)?;
    // Gone already (someone else cleaned up) counts as done: teardown is idempotent.
    if out.status.success() || !netns_path(name).exists() {
        Ok(())
    } else {
        Err(command_error(&cmd, &out))
    }
}

fn enter(file: &File, ns: Ns) -> Result<()> {
    setns(file, CloneFlags::CLONE_NEWNET).with_context(|| format!("setns into the {ns} namespace"))
}

/// Writes `/proc/sys/<key>`. Under /proc/sys/net the calling thread's network namespace
/// decides which namespace's settings are written, so this runs inside [`Lab::in_ns`].
fn write_sysctls(pairs: &[(&str, &str)]) -> Result<()> {
    for (key, value) in pairs {
        let path = format!("/proc/sys/{key}");
        std::fs::write(&path, value).with_context(|| format!("writing {value} to {path}"))?;
    }
    Ok(())
}

fn random_u64() -> u64 {
    // RandomState is seeded from the OS; the counter and clock keep two labs made in quick
    // succession by one process apart.
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut h = RandomState::new().build_hasher();
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    if let Ok(t) = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH) {
        h.write_u128(t.as_nanos());
    }
    h.finish()
}

fn describe(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|s| s.to_string_lossy())
        .collect::<Vec<_>>()
        .join(" ")
}

fn command_error(cmd: &Command, out: &Output) -> anyhow::Error {
    anyhow!(
        "`{}` failed ({}): {}",
        describe(cmd),
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    )
}

/// `ip -n <ns_name> args...`; its stdout, or an error with the command and its stderr.
fn ip_in(ns_name: &str, args: &[&str]) -> Result<String> {
    let out = run_checked(Command::new("ip").args(["-n", ns_name]).args(args))?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The guest kernel's address with its prefix, as `ip addr` takes it.
fn kernel_cidr() -> String {
    format!("{GUEST_KERNEL_V4}/{PREFIX_V4}")
}

/// Puts the guest kernel's address on `ifname` in the namespace `ns_name`
/// (`replace`: also if it is there already). A free function so that a
/// thread without the [`Lab`] (the stand-in's watcher) can call it.
fn kernel_address_in(ns_name: &str, ifname: &str) -> Result<()> {
    ip_in(ns_name, &["addr", "replace", &kernel_cidr(), "dev", ifname]).map(drop)
}

fn run_checked(cmd: &mut Command) -> Result<Output> {
    let out = run(cmd, CMD_TIMEOUT)?;
    if out.status.success() {
        Ok(out)
    } else {
        Err(command_error(cmd, &out))
    }
}

/// Runs `cmd` to completion, killing it after `timeout`. A non-zero exit is not an error
/// here; failing to start or to finish in time is.
fn run(cmd: &mut Command, timeout: Duration) -> Result<Output> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting `{}`", describe(cmd)))?;
    let stdout = drain(child.stdout.take());
    let stderr = drain(child.stderr.take());
    let deadline = Instant::now() + timeout;
    let mut nap = Duration::from_millis(1);
    let status: ExitStatus = loop {
        if let Some(status) = child.try_wait().context("waiting for a command")? {
            break status;
        }
        if Instant::now() >= deadline {
            // Our own unreaped child, so the pid cannot have been reused.
            let _ = child.kill();
            let _ = child.wait();
            bail!("`{}` did not finish within {timeout:?}", describe(cmd));
        }
        thread::sleep(nap);
        nap = (nap * 2).min(Duration::from_millis(20));
    };
    Ok(Output {
        status,
        stdout: stdout.join().unwrap_or_default(),
        stderr: stderr.join().unwrap_or_default(),
    })
}

fn drain<R: Read + Send + 'static>(pipe: Option<R>) -> JoinHandle<Vec<u8>> {
    thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(mut pipe) = pipe {
            let _ = pipe.read_to_end(&mut buf);
        }
        buf
    })
}

/// Link names from `ip -o link show`: `5: vf0@if4: <BROADCAST,...` → `vf0`.
fn parse_link_names(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|line| {
            let name = line.split(": ").nth(1)?;
            Some(name.split('@').next().unwrap_or(name).to_string())
        })
        .collect()
}

/// The port from a `bridge fdb show` line `<mac> dev <port> [vlan N] master br0 ...`. Lines
/// without `master br0` are the bridge's own (`self`) entries, not learned ones.
fn parse_fdb_port(text: &str, mac: MacAddr) -> Option<String> {
    text.lines().find_map(|line| {
        let words: Vec<&str> = line.split_whitespace().collect();
        let learned_here = words.windows(2).any(|w| w == ["master", BRIDGE]);
        let matches = words.first()?.parse::<MacAddr>().ok()? == mac;
        if !(learned_here && matches) {
            return None;
        }
        let port = words.windows(2).find(|w| w[0] == "dev")?[1];
        Some(port.to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_macs_are_local_unicast() {
        let random = random_local_mac(random_u64());
        assert_eq!(random.0[0], 0x02);
    }

    #[test]
    fn fdb_port_takes_learned_entries_only() {
        let mac: MacAddr = "02:11:22:33:44:55".parse().unwrap();
        let text = "\
33:33:00:00:00:01 dev br0 self permanent
02:11:22:33:44:55 dev br0 self permanent
02:11:22:33:44:55 dev to-src master br0 
02:99:22:33:44:55 dev to-dst vlan 1 master br0 permanent
";
        assert_eq!(parse_fdb_port(text, mac).as_deref(), Some("to-src"));
        let other: MacAddr = "02:99:22:33:44:55".parse().unwrap();
        assert_eq!(parse_fdb_port(text, other).as_deref(), Some("to-dst"));
        let absent: MacAddr = "02:00:00:00:00:01".parse().unwrap();
        assert_eq!(parse_fdb_port(text, absent), None);
    }

    #[test]
    fn link_names_drop_the_peer_suffix() {
        let text = "1: lo: <LOOPBACK,UP,LOWER_UP> mtu 65536 qdisc noqueue\n\
                    5: vf0@if4: <BROADCAST,MULTICAST,UP,LOWER_UP> mtu 1500\n";
        assert_eq!(parse_link_names(text), ["lo", "vf0"]);
    }

    #[test]
    fn lab_pid_parses_our_names_only() {
        assert_eq!(lab_pid("vfl-1234-a1b2c3-guest"), Some(1234));
        assert_eq!(lab_pid("vfl-1234"), None);
        assert_eq!(lab_pid("vfl-x-a1b2c3-guest"), None);
        assert_eq!(lab_pid("other-1234-a-guest"), None);
    }
}
