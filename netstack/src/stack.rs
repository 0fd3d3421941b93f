//! [`Stack`]: a smoltcp interface on a [`FailoverDevice`], its sockets and
//! the built-in services.
//!
//! Sizing (why these numbers): TCP buffers of 64 KiB per direction, the
//! most that needs no window scaling. With scaling, smoltcp 0.14 rounds its
//! advertised window down and so shrinks it; a Linux peer then holds data
//! beyond our window, and once our window is zero smoltcp rejects that
//! peer's ACKs as out of window (RFC 9293 asks to accept them) and both
//! sides stall for good. Seen in the lab with 256 KiB echo buffers in about
//! one run in three. 64 KiB still fills a link with a 100 µs RTT at 5 Gbit/s.
//! 32 out-of-order segments per socket
//! (`assembler-max-segment-count-32`) ride out a burst of loss during a
//! switch; the neighbour cache holds 64 entries (`iface-neighbor-cache-
//! count-64`), plenty for a guest on one L2 segment; up to 8 addresses.

use std::net::IpAddr;

use smoltcp::iface::{Config, Interface, SocketHandle, SocketSet};
use smoltcp::socket::{tcp, udp};
use smoltcp::time::Instant;
use smoltcp::wire::{
    EthernetAddress, HardwareAddress, IpAddress, IpCidr, Ipv4Address, Ipv6Address,
};

use crate::failover::FailoverDevice;
use crate::link::{Link, LinkError};
use crate::mac::MacAddr;
use crate::resend::ResendLimits;
use crate::wire::announce;

/// A service the stack runs by itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ServiceKind {
    UdpEcho,
    TcpEcho,
    TcpDiscard,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServiceConfig {
    pub kind: ServiceKind,
    pub port: u16,
}

/// Buffer sizes, per socket and direction. TCP buffers above 64 KiB turn on
/// window scaling; see the module documentation for why that is not the
/// default.
#[derive(Debug, Clone, Copy)]
pub struct Buffers {
    pub tcp: usize,
    pub udp_packets: usize,
    pub udp_bytes: usize,
    /// Connections a TCP service accepts at once.
    pub tcp_connections: usize,
}

impl Default for Buffers {
    fn default() -> Self {
        Buffers {
            tcp: 64 * 1024,
            udp_packets: 256,
            udp_bytes: 256 * 1500,
            tcp_connections: 32,
        }
    }
}

/// Everything a stack needs to start.
#[derive(Debug, Clone)]
pub struct StackConfig {
    pub mac: MacAddr,
    pub addresses: Vec<IpCidr>,
    pub gateway_v4: Option<Ipv4Address>,
    pub gateway_v6: Option<Ipv6Address>,
    pub services: Vec<ServiceConfig>,
    /// IP MTU of the links.
    pub mtu: usize,
    pub buffers: Buffers,
    /// What the device may hold to resend TCP segments after a switch.
    pub resend: ResendLimits,
    /// Let TCP peers use SACK (see [`crate::wire::tcp`] for when not to).
    pub tcp_sack: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum StackError {
    #[error("too many addresses: {0} (at most 8)")]
    TooManyAddresses(usize),
    #[error("{0} is not a unicast address")]
    NotUnicast(IpAddr),
    #[error("gateway {0} is not reachable through any configured prefix")]
    GatewayUnreachable(IpAddr),
    #[error("service {kind:?} on port {port}: {reason}")]
    Service {
        kind: ServiceKind,
        port: u16,
        reason: String,
    },
    #[error(transparent)]
    Link(#[from] LinkError),
}

/// One TCP connection of a built-in service.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Connection {
    pub local: Option<String>,
    pub remote: Option<String>,
    pub state: String,
    pub recv_queue: usize,
    pub send_queue: usize,
}

/// A built-in service and the sockets serving it.
struct Service {
    config: ServiceConfig,
    sockets: Vec<SocketHandle>,
}

/// The userspace stack: interface, device, sockets, services.
pub struct Stack {
    iface: Interface,
    device: FailoverDevice,
    sockets: SocketSet<'static>,
    services: Vec<Service>,
    buffers: Buffers,
    mac: MacAddr,
    /// The default gateways, re-resolved after a migration.
    gateways: (Option<Ipv4Address>, Option<Ipv6Address>),
    /// Scratch for echo services, so echoing allocates nothing per poll.
    scratch: Vec<u8>,
}

impl Stack {
    /// Build a stack over the links present at start (either may be absent).
    pub fn new(
        config: &StackConfig,
        standby: Option<Box<dyn Link>>,
        primary: Option<Box<dyn Link>>,
    ) -> Result<Self, StackError> {
        let mut device =
            FailoverDevice::new(standby, primary, config.mac, config.mtu, config.resend);
        device.set_tcp_sack(config.tcp_sack);
        let mut iface_config =
            Config::new(HardwareAddress::Ethernet(EthernetAddress(config.mac.0)));
        iface_config.random_seed = random_seed();
        let iface = Interface::new(iface_config, &mut device, Instant::now());
        let mut stack = Stack {
            iface,
            device,
            sockets: SocketSet::new(Vec::new()),
            services: Vec::new(),
            buffers: config.buffers,
            mac: config.mac,
            gateways: (None, None),
            scratch: vec![0; 64 * 1024],
        };
        stack.set_addresses(&config.addresses, config.gateway_v4, config.gateway_v6)?;
        for service in &config.services {
            stack.add_service(*service)?;
        }
        Ok(stack)
    }

    /// Replace the addresses and default gateways. Sockets bound to an
    /// address that stays keep their connections.
    pub fn set_addresses(
        &mut self,
        addresses: &[IpCidr],
        gateway_v4: Option<Ipv4Address>,
        gateway_v6: Option<Ipv6Address>,
    ) -> Result<(), StackError> {
        if addresses.len() > smoltcp::config::IFACE_MAX_ADDR_COUNT {
            return Err(StackError::TooManyAddresses(addresses.len()));
        }
        // smoltcp panics on a non-unicast interface address; refuse it here.
        if let Some(bad) = addresses
            .iter()
            .map(|c| IpAddr::from(c.address()))
            .find(|a| !is_unicast(a))
        {
            return Err(StackError::NotUnicast(bad));
        }
        for gw in gateway_v4
            .map(IpAddr::V4)
            .into_iter()
            .chain(gateway_v6.map(IpAddr::V6))
        {
            if !addresses.iter().any(|cidr| cidr.contains_addr(&gw.into())) {
                return Err(StackError::GatewayUnreachable(gw));
            }
        }
        let plain: Vec<IpAddr> = addresses.iter().map(|c| c.address().into()).collect();
        self.device.set_addresses(&plain)?;
        self.iface.update_ip_addrs(|addrs| {
            addrs.clear();
            addrs.extend(addresses.iter().copied());
        });
        self.gateways = (gateway_v4, gateway_v6);
        let routes = self.iface.routes_mut();
        routes.remove_default_ipv4_route();
        routes.remove_default_ipv6_route();
        if let Some(gw) = gateway_v4 {
            routes
                .add_default_ipv4_route(gw)
                .expect("route table has room after clearing defaults");
        }
        if let Some(gw) = gateway_v6 {
            routes
                .add_default_ipv6_route(gw)
                .expect("route table has room after clearing defaults");
        }
        Ok(())
    }

    /// Ask again for the link-layer address of the gateways and of every
    /// TCP peer on a configured prefix: after a migration cached entries
    /// may be stale. The entries in use stay until the answers replace
    /// them: flushing smoltcp's cache instead makes it drop what it sends
    /// until they come, and TCP then waits for its retransmission timer
    /// (1 s). Returns the number of requests a link took.
    pub fn refresh_neighbors(&mut self) -> usize {
        let mut targets: Vec<IpAddress> = self
            .gateways
            .0
            .map(IpAddress::Ipv4)
            .into_iter()
            .chain(self.gateways.1.map(IpAddress::Ipv6))
            .collect();
        for (_, socket) in self.sockets.iter() {
            if let smoltcp::socket::Socket::Tcp(tcp) = socket {
                targets.extend(tcp.remote_endpoint().map(|e| e.addr));
            }
        }
        targets.sort();
        targets.dedup();
        let frames: Vec<Vec<u8>> = targets
            .iter()
            .filter_map(|&target| {
                let cidr = self
                    .iface
                    .ip_addrs()
                    .iter()
                    .find(|c| c.contains_addr(&target))?;
                Some(match (cidr.address(), target) {
                    (IpAddress::Ipv4(me), IpAddress::Ipv4(t)) => {
                        announce::arp_request(self.mac, me, t)
                    }
                    (IpAddress::Ipv6(me), IpAddress::Ipv6(t)) => {
                        announce::neighbor_solicitation(self.mac, me, t)
                    }
                    _ => return None,
                })
            })
            .collect();
        self.send_now(&frames)
    }

    /// The addresses the stack answers on.
    pub fn addresses(&self) -> &[IpCidr] {
        self.iface.ip_addrs()
    }

    pub fn mac(&self) -> MacAddr {
        self.mac
    }

    /// Take the failover pair's MAC (known once its standby is found).
    pub fn set_mac(&mut self, mac: MacAddr) {
        self.mac = mac;
        self.device.set_mac(mac);
        self.iface
            .set_hardware_addr(HardwareAddress::Ethernet(EthernetAddress(mac.0)));
    }

    pub fn device(&self) -> &FailoverDevice {
        &self.device
    }

    pub fn device_mut(&mut self) -> &mut FailoverDevice {
        &mut self.device
    }

    /// The socket set, for programs that embed the stack.
    pub fn sockets_mut(&mut self) -> &mut SocketSet<'static> {
        &mut self.sockets
    }

    pub fn iface_mut(&mut self) -> &mut Interface {
        &mut self.iface
    }

    /// Both at once, as `tcp::Socket::connect` needs the interface's context
    /// while the socket is borrowed from the set.
    pub fn sockets_and_iface(&mut self) -> (&mut SocketSet<'static>, &mut Interface) {
        (&mut self.sockets, &mut self.iface)
    }

    /// A TCP socket with the stack's buffer sizes, added to the set.
    pub fn add_tcp_socket(&mut self) -> SocketHandle {
        let size = self.buffers.tcp;
        self.sockets.add(tcp::Socket::new(
            tcp::SocketBuffer::new(vec![0; size]),
            tcp::SocketBuffer::new(vec![0; size]),
        ))
    }

    /// A UDP socket with the stack's buffer sizes, added to the set.
    pub fn add_udp_socket(&mut self) -> SocketHandle {
        let b = self.buffers;
        let buffer = || {
            udp::PacketBuffer::new(
                vec![udp::PacketMetadata::EMPTY; b.udp_packets],
                vec![0; b.udp_bytes],
            )
        };
        self.sockets.add(udp::Socket::new(buffer(), buffer()))
    }

    /// Start a built-in service.
    pub fn add_service(&mut self, config: ServiceConfig) -> Result<(), StackError> {
        if self.services.iter().any(|s| s.config == config) {
            return Err(StackError::Service {
                kind: config.kind,
                port: config.port,
                reason: "already running".into(),
            });
        }
        let mut service = Service {
            config,
            sockets: Vec::new(),
        };
        if config.kind == ServiceKind::UdpEcho {
            let handle = self.add_udp_socket();
            self.sockets
                .get_mut::<udp::Socket>(handle)
                .bind(config.port)
                .map_err(|e| StackError::Service {
                    kind: config.kind,
                    port: config.port,
                    reason: e.to_string(),
                })?;
            service.sockets.push(handle);
        }
        self.services.push(service);
        self.run_services();
        Ok(())
    }

    /// Stop a built-in service, closing its sockets.
    pub fn remove_service(&mut self, config: ServiceConfig) {
        self.services.retain(|service| {
            if service.config != config {
                return true;
            }
            for handle in &service.sockets {
                self.sockets.remove(*handle);
            }
            false
        });
    }

    /// The TCP connections of the built-in services, for status reports.
    pub fn connections(&self) -> Vec<Connection> {
        self.services
            .iter()
            .filter(|service| service.config.kind != ServiceKind::UdpEcho)
            .flat_map(|service| &service.sockets)
            .filter_map(|&handle| match self.sockets.get::<tcp::Socket>(handle) {
                s if s.state() == tcp::State::Listen => None,
                s => Some(Connection {
                    local: s.local_endpoint().map(|e| e.to_string()),
                    remote: s.remote_endpoint().map(|e| e.to_string()),
                    state: s.state().to_string(),
                    recv_queue: s.recv_queue(),
                    send_queue: s.send_queue(),
                }),
            })
            .collect()
    }

    pub fn services(&self) -> impl Iterator<Item = ServiceConfig> + '_ {
        self.services.iter().map(|s| s.config)
    }

    /// One round: read the links, run smoltcp and the services, flush TX.
    /// Returns whether anything happened (frames moved or sockets changed),
    /// so the caller knows whether to poll again or sleep.
    pub fn poll(&mut self, now: Instant) -> bool {
        self.device.begin_round();
        let before = self.device.frames_moved();
        let mut changed = false;
        // Services may queue data that a second pass sends out at once.
        for _ in 0..2 {
            let result = self.iface.poll(now, &mut self.device, &mut self.sockets);
            changed |= result == smoltcp::iface::PollResult::SocketStateChanged;
            changed |= self.run_services();
        }
        self.device.flush();
        changed || self.device.frames_moved() != before || self.device.rx_queued() > 0
    }

    /// How long smoltcp can wait before its next timer (retransmit, delayed
    /// ACK, neighbour expiry); `None` when it has no timer.
    pub fn poll_delay(&mut self, now: Instant) -> Option<smoltcp::time::Duration> {
        self.iface.poll_delay(now, &self.sockets)
    }

    /// Send one gratuitous ARP per IPv4 address and one unsolicited NA per
    /// IPv6 address (and a RARP for the MAC when asked) on the active path.
    /// Returns the number of frames a link took.
    pub fn announce(&mut self, rarp: bool) -> usize {
        let mut frames: Vec<Vec<u8>> = self
            .iface
            .ip_addrs()
            .iter()
            .map(|cidr| match cidr.address().into() {
                IpAddr::V4(ip) => announce::gratuitous_arp(self.mac, ip),
                IpAddr::V6(ip) => announce::unsolicited_na(self.mac, ip),
            })
            .collect();
        if rarp {
            frames.push(announce::rarp(self.mac));
        }
        self.send_now(&frames)
    }

    /// Send frames built outside smoltcp on the active path and flush;
    /// returns how many a link took.
    fn send_now(&mut self, frames: &[Vec<u8>]) -> usize {
        let sent = frames.iter().filter(|f| self.device.send_raw(f)).count();
        self.device.flush();
        sent
    }

    /// Move data for the built-in services; returns whether any moved.
    fn run_services(&mut self) -> bool {
        let mut moved = false;
        for i in 0..self.services.len() {
            let config = self.services[i].config;
            moved |= match config.kind {
                ServiceKind::UdpEcho => self.run_udp_echo(i),
                ServiceKind::TcpEcho | ServiceKind::TcpDiscard => self.run_tcp(i),
            };
        }
        moved
    }

    fn run_udp_echo(&mut self, index: usize) -> bool {
        let mut moved = false;
        for &handle in &self.services[index].sockets {
            let socket = self.sockets.get_mut::<udp::Socket>(handle);
            while socket.can_recv() && socket.can_send() {
                let Ok((len, meta)) = socket.recv_slice(&mut self.scratch) else {
                    break;
                };
                // Answer from the address that was asked (a socket bound to
                // a port only would pick the first address of the subnet).
                // A full TX buffer drops the reply: UDP's contract.
                let _ = socket.send_slice(&self.scratch[..len], meta);
                moved = true;
            }
        }
        moved
    }

    fn run_tcp(&mut self, index: usize) -> bool {
        let ServiceConfig { kind, port } = self.services[index].config;
        // About one segment's payload: the IP MTU less IPv6 and TCP headers
        // with options.
        let segment = self.device.mtu().saturating_sub(SEGMENT_HEADERS);
        let mut moved = false;
        let mut listening = 0;
        let mut handles = std::mem::take(&mut self.services[index].sockets);
        handles.retain(|&handle| {
            let socket = self.sockets.get_mut::<tcp::Socket>(handle);
            match kind {
                ServiceKind::TcpEcho => moved |= echo(socket, &mut self.scratch, segment),
                _ => moved |= discard(socket),
            }
            if socket.state() == tcp::State::CloseWait && socket.send_queue() == 0 {
                socket.close();
            }
            match socket.state() {
                tcp::State::Listen => {
                    listening += 1;
                    true
                }
                tcp::State::Closed => {
                    self.sockets.remove(handle);
                    false
                }
                _ => true,
            }
        });
        if listening == 0 && handles.len() < self.buffers.tcp_connections {
            let handle = self.add_tcp_socket();
            let socket = self.sockets.get_mut::<tcp::Socket>(handle);
            // An echo sends back what it has at once: with Nagle it would
            // hold a short tail until the peer's ACK, which a Linux peer
            // delays 40 ms (seen as 40 ms stalls in the QEMU test's echo).
            socket.set_nagle_enabled(kind != ServiceKind::TcpEcho);
            // The port was validated when the service was added; listen only
            // fails on port 0 or a socket that is not closed.
            if socket.listen(port).is_ok() {
                handles.push(handle);
            } else {
                self.sockets.remove(handle);
            }
        }
        self.services[index].sockets = handles;
        moved
    }
}

/// IPv6 (40), TCP (20) and TCP options (timestamps, 12; rounded up).
const SEGMENT_HEADERS: usize = 80;

/// Copy what a TCP socket received back into its send buffer, as far as
/// the send buffer has room. The socket sends without Nagle, so a piece
/// shorter than `segment` bytes goes out as a short segment: one is copied
/// only when it is all there is to echo, not when the send buffer has
/// just a little room and more is waiting (that would halve the echo's
/// throughput in short segments).
fn echo(socket: &mut tcp::Socket, scratch: &mut [u8], segment: usize) -> bool {
    let mut moved = false;
    while socket.can_recv() && socket.can_send() {
        let room = (socket.send_capacity() - socket.send_queue()).min(scratch.len());
        if room < segment.min(socket.send_capacity()) && socket.recv_queue() > room {
            break;
        }
        let Ok(n) = socket.recv_slice(&mut scratch[..room]) else {
            break;
        };
        if n == 0 {
            break;
        }
        // `room` was free, so the whole slice fits.
        let _ = socket.send_slice(&scratch[..n]);
        moved = true;
    }
    moved
}

/// Throw away what a TCP socket received.
fn discard(socket: &mut tcp::Socket) -> bool {
    let mut moved = false;
    while socket.can_recv() {
        match socket.recv(|data| (data.len(), data.len())) {
            Ok(n) if n > 0 => moved = true,
            _ => break,
        }
    }
    moved
}

fn is_unicast(addr: &IpAddr) -> bool {
    match addr {
        IpAddr::V4(a) => !(a.is_multicast() || a.is_broadcast() || a.is_unspecified()),
        IpAddr::V6(a) => !(a.is_multicast() || a.is_unspecified()),
    }
}

fn random_seed() -> u64 {
    // A zero seed, should getrandom fail, is still valid.
    crate::sys::random_u64()
}
