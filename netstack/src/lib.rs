//! vfailover-netstack: a userspace TCP/IP stack (smoltcp) whose link is a
//! failover pair — AF_XDP on the primary (an SR-IOV VF) while it is there,
//! the standby (virtio-net) when it is not.
//!
//! Layers, bottom up: [`link`] (one NIC: AF_XDP, AF_PACKET or in-memory),
//! [`failover`] (smoltcp `phy::Device` over standby + optional primary),
//! [`stack`] (smoltcp interface, sockets and built-in services),
//! [`datapath`] (the thread that owns all of it and sleeps when idle).

#![deny(unsafe_code)]

pub mod datapath;
pub mod failover;
pub mod link;
pub mod mac;
pub mod monitor;
pub mod resend;
pub mod stack;
pub mod stats;
#[allow(unsafe_code)]
pub mod sys;
pub mod wire;
pub mod xdp;
