//! An in-memory link pair for tests that need no root or kernel.
//!
//! [`MemoryLink::pair`] returns two ends; a frame sent on one is received on
//! the other. A [`MemoryLink`] can also be made unhealthy to simulate a VF
//! being unplugged.

use std::collections::VecDeque;
use std::net::IpAddr;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use super::{Health, Link, LinkError, LinkMode};

type Queue = Arc<Mutex<VecDeque<Vec<u8>>>>;

/// Interface indexes are unique per process, as they are per namespace.
static NEXT_IFINDEX: AtomicU32 = AtomicU32::new(1);

/// One end of an in-memory wire.
pub struct MemoryLink {
    ifname: String,
    ifindex: u32,
    rx: Queue,
    tx: Queue,
    health: Health,
    max_frame_len: usize,
    addresses: Vec<IpAddr>,
}

impl MemoryLink {
    /// Two connected ends, `a` and `b`, with made-up, unique interface indexes.
    pub fn pair(name_a: &str, name_b: &str) -> (MemoryLink, MemoryLink) {
        let ab: Queue = Arc::default();
        let ba: Queue = Arc::default();
        let end = |ifname: &str, ifindex, rx: &Queue, tx: &Queue| MemoryLink {
            ifname: ifname.to_owned(),
            ifindex,
            rx: rx.clone(),
            tx: tx.clone(),
            health: Health::Up,
            max_frame_len: 1514,
            addresses: Vec::new(),
        };
        let ifindex = NEXT_IFINDEX.fetch_add(2, Ordering::Relaxed);
        (
            end(name_a, ifindex, &ba, &ab),
            end(name_b, ifindex + 1, &ab, &ba),
        )
    }

    /// Put a frame on the wire towards this end, as if the far end sent it.
    pub fn inject(&self, frame: &[u8]) {
        self.rx.lock().unwrap().push_back(frame.to_vec());
    }

    /// The addresses last given to [`Link::set_addresses`].
    pub fn addresses(&self) -> &[IpAddr] {
        &self.addresses
    }
}

impl Link for MemoryLink {
    fn ifname(&self) -> &str {
        &self.ifname
    }

    fn ifindex(&self) -> u32 {
        self.ifindex
    }

    fn mode(&self) -> LinkMode {
        LinkMode::Memory
    }

    fn max_frame_len(&self) -> usize {
        self.max_frame_len
    }

    fn recv(&mut self, budget: usize, deliver: &mut dyn FnMut(&[u8])) -> Result<usize, LinkError> {
        self.check()?;
        let mut n = 0;
        while n < budget {
            let Some(frame) = self.rx.lock().unwrap().pop_front() else {
                break;
            };
            deliver(&frame);
            n += 1;
        }
        Ok(n)
    }

    fn send(&mut self, len: usize, fill: &mut dyn FnMut(&mut [u8])) -> Result<bool, LinkError> {
        self.check()?;
        if len > self.max_frame_len {
            return Err(LinkError::TooLong {
                len,
                max: self.max_frame_len,
            });
        }
        let mut frame = vec![0; len];
        fill(&mut frame);
        self.tx.lock().unwrap().push_back(frame);
        Ok(true)
    }

    fn flush(&mut self) -> Result<(), LinkError> {
        self.check()
    }

    fn fds(&self) -> Vec<RawFd> {
        Vec::new()
    }

    fn set_addresses(&mut self, addrs: &[IpAddr]) -> Result<(), LinkError> {
        self.addresses = addrs.to_vec();
        Ok(())
    }

    fn health(&self) -> Health {
        self.health
    }

    fn set_health(&mut self, health: Health) {
        self.health = health;
    }
}

impl MemoryLink {
    fn check(&self) -> Result<(), LinkError> {
        match self.health {
            Health::Up => Ok(()),
            Health::Down => Err(LinkError::Down(self.ifname.clone())),
            Health::Gone => Err(LinkError::Gone(self.ifname.clone())),
        }
    }
}
