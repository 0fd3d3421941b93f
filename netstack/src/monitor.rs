//! Link events from rtnetlink: devices appearing, changing and vanishing.
//!
//! An AF_XDP socket's `poll` never reports that its device unregistered,
//! so the datapath learns of a VF's loss here (`RTM_DELLINK`) — the fastest
//! signal the kernel gives. The same events carry carrier changes and
//! `IFLA_EVENT_NOTIFY_PEERS`, virtio-net's migration hint. [`dump_links`]
//! lists the devices that exist now, in the same shape, so a listener can
//! start from a full picture and follow the notifications from there.

use std::io;
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::time::Duration;

use nix::poll::{PollFd, PollFlags, PollTimeout};

use netlink_packet_core::{
    NetlinkMessage, NetlinkPayload, NLM_F_DUMP, NLM_F_DUMP_INTR, NLM_F_REQUEST,
};
use netlink_packet_route::link::{LinkAttribute, LinkEvent as KernelEvent, LinkFlags, LinkMessage};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

use crate::mac::MacAddr;

/// `RTMGRP_LINK`: the multicast group of link notifications.
const RTMGRP_LINK: u32 = 1;
/// Large enough that a burst of hotplug events does not overrun the socket.
const RCVBUF: usize = 1 << 20;
/// Larger than any datagram the kernel sends (dump skbs are at most 32 KiB).
const DATAGRAM: usize = 64 * 1024;
/// How often [`dump_links`] restarts a dump that links changed under.
const DUMP_ATTEMPTS: usize = 3;

/// What happened to a network device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkEvent {
    /// `RTM_NEWLINK`: the device exists (new or changed).
    Changed(LinkState),
    /// `RTM_DELLINK`: the device unregistered (or left the namespace).
    Removed {
        ifindex: u32,
        ifname: Option<String>,
    },
    /// The socket overran and events were lost: rescan the devices.
    Overrun,
}

/// A device as an `RTM_NEWLINK` describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkState {
    pub ifindex: u32,
    pub ifname: Option<String>,
    pub mac: Option<MacAddr>,
    /// `IFLA_PERM_ADDRESS`: the burnt-in MAC, which the kernel's failover
    /// pairing compares. `None` when the device has none (a veth).
    pub perm_mac: Option<MacAddr>,
    /// Administratively up (`IFF_UP`).
    pub up: bool,
    /// Has carrier and is running: `IFF_LOWER_UP` and `IFF_RUNNING`. The
    /// kernel sets RUNNING (operstate UP) only once linkwatch has finished
    /// bringing the link up, up to a second after the carrier came; until
    /// then what is sent through its qdisc is dropped.
    pub carrier: bool,
    /// The message carried `IFLA_EVENT_NOTIFY_PEERS`.
    pub notify_peers: bool,
}

/// A non-blocking rtnetlink socket subscribed to link notifications, in the
/// network namespace of the thread that opened it.
pub struct LinkMonitor {
    socket: Socket,
    buf: Vec<u8>,
}

impl LinkMonitor {
    pub fn open() -> io::Result<Self> {
        let mut socket = Socket::new(NETLINK_ROUTE)?;
        socket.bind(&SocketAddr::new(0, RTMGRP_LINK))?;
        socket.set_non_blocking(true)?;
        socket.set_rx_buf_sz(RCVBUF)?;
        Ok(LinkMonitor {
            socket,
            buf: vec![0; DATAGRAM],
        })
    }

    pub fn fd(&self) -> RawFd {
        self.socket.as_raw_fd()
    }

    /// Block until a notification is pending or `timeout` passes.
    pub fn wait(&self, timeout: Duration) -> io::Result<()> {
        let mut fds = [PollFd::new(self.socket.as_fd(), PollFlags::POLLIN)];
        let ms = u16::try_from(timeout.as_millis()).unwrap_or(u16::MAX);
        match nix::poll::poll(&mut fds, PollTimeout::from(ms)) {
            Ok(_) | Err(nix::errno::Errno::EINTR) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Read every pending notification and hand each event to `on_event`.
    pub fn read(&mut self, mut on_event: impl FnMut(LinkEvent)) -> io::Result<()> {
        loop {
            let n = match self.socket.recv(&mut &mut self.buf[..], libc::MSG_DONTWAIT) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                    on_event(LinkEvent::Overrun);
                    continue;
                }
                Err(e) => return Err(e),
            };
            parse_datagram(&self.buf[..n], &mut on_event);
        }
    }
}

/// Every link in the calling thread's network namespace, from an
/// `RTM_GETLINK` dump.
///
/// The dump runs on a socket of its own: on the monitor's socket its replies
/// would interleave with notifications. Open the [`LinkMonitor`] first and
/// dump second, so that no change falls between the two; a notification
/// queued before the dump then repeats what the dump already says.
pub fn dump_links() -> io::Result<Vec<LinkState>> {
    let mut socket = Socket::new(NETLINK_ROUTE)?;
    socket.bind_auto()?;
    socket.connect(&SocketAddr::new(0, 0))?;
    let mut buf = vec![0; DATAGRAM];
    let mut links = Vec::new();
    for attempt in 1..=DUMP_ATTEMPTS {
        links.clear();
        let sequence = u32::try_from(attempt).unwrap_or(u32::MAX);
        let complete = dump_once(&socket, sequence, &mut buf, &mut links)?;
        // A dump that links changed under may miss or repeat a device; a
        // second one usually runs clean, and a busy system gets the last.
        if complete {
            break;
        }
    }
    Ok(links)
}

/// One dump; false when the kernel flagged it as interrupted by changes.
fn dump_once(
    socket: &Socket,
    sequence: u32,
    buf: &mut [u8],
    links: &mut Vec<LinkState>,
) -> io::Result<bool> {
    let mut request = NetlinkMessage::from(RouteNetlinkMessage::GetLink(LinkMessage::default()));
    request.header.flags = NLM_F_REQUEST | NLM_F_DUMP;
    request.header.sequence_number = sequence;
    request.finalize();
    let mut out = vec![0; request.buffer_len()];
    request.serialize(&mut out);
    socket.send(&out, 0)?;

    let mut complete = true;
    loop {
        let n = socket.recv(&mut &mut buf[..], 0)?;
        let mut done = false;
        let mut error = None;
        for message in messages(&buf[..n]) {
            if message.header.sequence_number != sequence {
                continue; // the tail of an earlier, abandoned dump
            }
            complete &= message.header.flags & NLM_F_DUMP_INTR == 0;
            match message.payload {
                NetlinkPayload::Done(_) => done = true,
                NetlinkPayload::Error(e) => {
                    error = e.code.map(|code| io::Error::from_raw_os_error(-code.get()));
                    done = true;
                }
                NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(m)) => {
                    links.push(link_state(&m));
                }
                _ => {}
            }
        }
        if let Some(e) = error {
            return Err(e);
        }
        if done {
            return Ok(complete);
        }
    }
}

/// Parse one netlink datagram (several messages back to back) into link
/// events.
pub fn parse_datagram(data: &[u8], on_event: &mut impl FnMut(LinkEvent)) {
    for message in messages(data) {
        if let Some(event) = link_event(message.payload) {
            on_event(event);
        }
    }
}

/// The messages of one datagram. Garbage ends the datagram: the kernel
/// wrote it, so a decode error means a format we do not know, not an
/// attack; what was parsed before it still counts.
fn messages(mut data: &[u8]) -> impl Iterator<Item = NetlinkMessage<RouteNetlinkMessage>> + '_ {
    std::iter::from_fn(move || {
        if data.is_empty() {
            return None;
        }
        let message = NetlinkMessage::<RouteNetlinkMessage>::deserialize(data).ok()?;
        let len = message.header.length as usize;
        if len == 0 || len > data.len() {
            return None;
        }
        // Messages are 4-byte aligned.
        data = &data[len.next_multiple_of(4).min(data.len())..];
        Some(message)
    })
}

fn link_event(payload: NetlinkPayload<RouteNetlinkMessage>) -> Option<LinkEvent> {
    match payload {
        NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(m)) => {
            Some(LinkEvent::Changed(link_state(&m)))
        }
        NetlinkPayload::InnerMessage(RouteNetlinkMessage::DelLink(m)) => Some(LinkEvent::Removed {
            ifindex: m.header.index,
            ifname: link_state(&m).ifname,
        }),
        _ => None,
    }
}

fn link_state(message: &LinkMessage) -> LinkState {
    let flags = message.header.flags;
    let mut state = LinkState {
        ifindex: message.header.index,
        ifname: None,
        mac: None,
        perm_mac: None,
        up: flags.contains(LinkFlags::Up),
        carrier: flags.contains(LinkFlags::LowerUp) && flags.contains(LinkFlags::Running),
        notify_peers: false,
    };
    for attribute in &message.attributes {
        match attribute {
            LinkAttribute::IfName(name) => state.ifname = Some(name.clone()),
            LinkAttribute::Address(mac) => state.mac = MacAddr::try_from(&mac[..]).ok(),
            // The kernel omits an all-zero permanent address; be as strict.
            LinkAttribute::PermAddress(mac) => {
                state.perm_mac = MacAddr::try_from(&mac[..])
                    .ok()
                    .filter(|mac| !mac.is_zero());
            }
            LinkAttribute::Event(KernelEvent::NotifyPeers) => state.notify_peers = true,
            _ => {}
        }
    }
    state
}

#[cfg(test)]
mod tests {
    use super::*;
    use netlink_packet_route::link::LinkHeader;

    fn new_link(attributes: Vec<LinkAttribute>) -> Vec<u8> {
        let mut link = LinkMessage::default();
        link.header = LinkHeader {
            index: 7,
            flags: LinkFlags::Up | LinkFlags::LowerUp | LinkFlags::Running,
            ..LinkHeader::default()
        };
        link.attributes = attributes;
        let mut message = NetlinkMessage::from(RouteNetlinkMessage::NewLink(link));
        message.finalize();
        let mut buf = vec![0; message.buffer_len()];
        message.serialize(&mut buf);
        buf
    }

    fn parse(data: &[u8]) -> Vec<LinkEvent> {
        let mut events = Vec::new();
        parse_datagram(data, &mut |e| events.push(e));
        events
    }

    #[test]
    fn new_link_carries_permanent_address() {
        let data = new_link(vec![
            LinkAttribute::IfName("ens4".into()),
            LinkAttribute::Address(vec![2, 0, 0, 0, 0, 1]),
            LinkAttribute::PermAddress(vec![2, 0, 0, 0, 0, 2]),
        ]);
        let [LinkEvent::Changed(state)] = &parse(&data)[..] else {
            panic!("one Changed expected");
        };
        assert_eq!(state.ifindex, 7);
        assert_eq!(state.ifname.as_deref(), Some("ens4"));
        assert_eq!(state.mac, Some(MacAddr([2, 0, 0, 0, 0, 1])));
        assert_eq!(state.perm_mac, Some(MacAddr([2, 0, 0, 0, 0, 2])));
        assert!(state.up && state.carrier && !state.notify_peers);
    }

    #[test]
    fn carrier_needs_the_link_running_too() {
        let mut message = LinkMessage::default();
        message.header.index = 7;
        message.header.flags = LinkFlags::Up | LinkFlags::LowerUp;
        let state = link_state(&message);
        assert!(state.up && !state.carrier, "linkwatch has not run yet");
    }

    #[test]
    fn zero_or_odd_permanent_address_is_none() {
        for perm in [vec![0; 6], vec![1, 2, 3]] {
            let data = new_link(vec![LinkAttribute::PermAddress(perm)]);
            let [LinkEvent::Changed(state)] = &parse(&data)[..] else {
                panic!("one Changed expected");
            };
            assert_eq!(state.perm_mac, None);
        }
    }

    #[test]
    fn garbage_after_a_message_keeps_the_message() {
        let mut data = new_link(vec![LinkAttribute::Event(KernelEvent::NotifyPeers)]);
        data.extend_from_slice(&[0xff; 7]);
        let events = parse(&data);
        assert!(matches!(&events[..], [LinkEvent::Changed(s)] if s.notify_peers));
    }

    #[test]
    fn dump_lists_loopback() {
        // Any namespace has `lo` at ifindex 1, and a dump needs no privilege.
        let links = dump_links().expect("dump");
        let lo = links.iter().find(|l| l.ifindex == 1).expect("lo in dump");
        assert_eq!(lo.ifname.as_deref(), Some("lo"));
        assert!(lo.up);
    }
}
