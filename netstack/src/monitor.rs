//! Link events from rtnetlink: devices appearing, changing and vanishing.
//!
//! An AF_XDP socket's `poll` never reports that its device unregistered,
//! so the datapath learns of a VF's loss here (`RTM_DELLINK`) — the fastest
//! signal the kernel gives. The same events carry carrier changes and
//! `IFLA_EVENT_NOTIFY_PEERS`, virtio-net's migration hint.

use std::io;
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::time::Duration;

use nix::poll::{PollFd, PollFlags, PollTimeout};

use netlink_packet_core::{NetlinkMessage, NetlinkPayload};
use netlink_packet_route::link::{LinkAttribute, LinkEvent as KernelEvent, LinkFlags, LinkMessage};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

/// `RTMGRP_LINK`: the multicast group of link notifications.
const RTMGRP_LINK: u32 = 1;
/// Large enough that a burst of hotplug events does not overrun the socket.
const RCVBUF: usize = 1 << 20;

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
    pub mac: Option<[u8; 6]>,
    /// Administratively up (`IFF_UP`).
    pub up: bool,
    /// Has carrier (`IFF_LOWER_UP`).
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
            buf: vec![0; 64 * 1024],
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

/// Parse one netlink datagram (several messages back to back). Garbage
/// ends the datagram: the kernel wrote it, so a decode error means a format
/// we do not know, not an attack; what was parsed before it still counts.
pub fn parse_datagram(mut data: &[u8], on_event: &mut impl FnMut(LinkEvent)) {
    while !data.is_empty() {
        let Ok(message) = NetlinkMessage::<RouteNetlinkMessage>::deserialize(data) else {
            return;
        };
        let len = message.header.length as usize;
        if len == 0 || len > data.len() {
            return;
        }
        if let Some(event) = link_event(message.payload) {
            on_event(event);
        }
        // Messages are 4-byte aligned.
        data = &data[len.next_multiple_of(4).min(data.len())..];
    }
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
        up: flags.contains(LinkFlags::Up),
        carrier: flags.contains(LinkFlags::LowerUp),
        notify_peers: false,
    };
    for attribute in &message.attributes {
        match attribute {
            LinkAttribute::IfName(name) => state.ifname = Some(name.clone()),
            LinkAttribute::Address(mac) => state.mac = mac.as_slice().try_into().ok(),
            LinkAttribute::Event(KernelEvent::NotifyPeers) => state.notify_peers = true,
            _ => {}
        }
    }
    state
}
