//! Embedding the failover stack in your own program: a TCP server that
//! greets every client, on a standby (AF_PACKET) and an optional primary
//! (AF_XDP) sharing one MAC.
//!
//! ```sh
//! # as root, inside a namespace or guest whose NICs you own:
//! cargo run --example embed -- virtio0 02:00:00:00:21:03 10.213.0.20/24 [vf0]
//! ```
//! Then `nc 10.213.0.20 8080` from a peer on that segment.

use std::net::IpAddr;
use std::time::Duration;

use smoltcp::socket::tcp;
use smoltcp::wire::IpCidr;
use vfailover_netstack::datapath::{DatapathHandle, DatapathOptions};
use vfailover_netstack::link::packet::PacketLink;
use vfailover_netstack::link::xdp::{XdpConfig, XdpLink};
use vfailover_netstack::link::Link;
use vfailover_netstack::mac::MacAddr;
use vfailover_netstack::resend::ResendLimits;
use vfailover_netstack::stack::{Buffers, Stack, StackConfig};

const PORT: u16 = 8080;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [standby, mac, cidr, rest @ ..] = args.as_slice() else {
        return Err("usage: embed STANDBY MAC CIDR [PRIMARY]".into());
    };
    let mac: MacAddr = mac.parse()?;
    let cidr: IpCidr = cidr.parse().map_err(|_| "bad CIDR")?;
    let addresses = [IpAddr::from(cidr.address())];

    let standby: Box<dyn Link> = Box::new(PacketLink::open(standby, &addresses)?);
    let primary: Option<Box<dyn Link>> = match rest.first() {
        Some(ifname) => Some(Box::new(XdpLink::open(&XdpConfig {
            ifname: ifname.clone(),
            addresses: addresses.to_vec(),
            ..XdpConfig::default()
        })?)),
        None => None,
    };
    let config = StackConfig {
        mac,
        addresses: vec![cidr],
        gateway_v4: None,
        gateway_v6: None,
        services: Vec::new(),
        mtu: 1500,
        buffers: Buffers::default(),
        resend: ResendLimits::default(),
        tcp_sack: true,
    };
    let mut stack = Stack::new(&config, Some(standby), primary)?;
    let server = stack.add_tcp_socket();
    stack
        .sockets_mut()
        .get_mut::<tcp::Socket>(server)
        .listen(PORT)?;

    // The app runs in the datapath thread after every poll: no locks.
    let app = Box::new(move |stack: &mut Stack| {
        let socket = stack.sockets_mut().get_mut::<tcp::Socket>(server);
        match socket.state() {
            tcp::State::Established if socket.can_send() => {
                let _ = socket.send_slice(b"hello from vfailover\n");
                socket.close();
                true
            }
            tcp::State::Closed => {
                let _ = socket.listen(PORT);
                true
            }
            _ => false,
        }
    });
    let datapath = DatapathHandle::spawn(stack, DatapathOptions::default(), Some(app))?;
    println!(
        "listening on {}:{PORT}; stats every 5 s, Ctrl-C to stop",
        cidr.address()
    );
    loop {
        std::thread::sleep(Duration::from_secs(5));
        let (path, stats) = datapath.call(|s| (s.device().path(), s.device().stats()))?;
        println!(
            "path {path}: primary {:?} standby {:?}",
            stats.primary, stats.standby
        );
    }
}
