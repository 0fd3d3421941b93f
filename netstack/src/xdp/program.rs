//! Loading the filter program, attaching it, and its maps.

use std::collections::HashSet;
use std::fmt;
use std::io;
use std::net::IpAddr;
use std::os::fd::{AsFd, OwnedFd, RawFd};

use libbpf_rs::{libbpf_sys, MapCore, MapFlags, Object, ObjectBuilder};

use crate::link::LinkError;
use crate::sys::xdp as sys;

/// The compiled filter (see the module header for how it is built).
static FILTER_OBJECT: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/filter.bpf.o"));

const PROGRAM: &str = "vfailover_filter";
const XSKS: &str = "xsks";
const ADDRS_V4: &str = "addrs_v4";
const ADDRS_V6: &str = "addrs_v6";

/// How many addresses of each family the filter can hold.
pub const MAX_ADDRESSES: u32 = 64;

/// Where the XDP program runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttachMode {
    /// In the driver, before an skb exists (needed for zero-copy).
    Driver,
    /// In the generic (SKB) path; every device supports it.
    Generic,
}

impl AttachMode {
    fn flags(self) -> u32 {
        match self {
            AttachMode::Driver => libbpf_sys::XDP_FLAGS_DRV_MODE,
            AttachMode::Generic => libbpf_sys::XDP_FLAGS_SKB_MODE,
        }
    }
}

impl fmt::Display for AttachMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AttachMode::Driver => "driver",
            AttachMode::Generic => "generic",
        })
    }
}

/// The filter program and its maps, loaded into the kernel but not
/// attached to any device.
pub struct Filter {
    object: Object,
    /// Addresses currently in the maps, so updates only touch differences.
    addresses: HashSet<IpAddr>,
}

impl fmt::Debug for Filter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Filter")
            .field("addresses", &self.addresses)
            .finish_non_exhaustive()
    }
}

/// The program attached to a device. Dropping it closes the BPF link, which
/// detaches the program (the kernel does the same if the process dies).
#[derive(Debug)]
pub struct Attachment {
    _link: OwnedFd,
    mode: AttachMode,
}

impl Attachment {
    pub fn mode(&self) -> AttachMode {
        self.mode
    }
}

fn setup(what: &str, err: impl fmt::Display) -> LinkError {
    LinkError::Filter {
        what: what.to_owned(),
        error: err.to_string(),
    }
}

impl Filter {
    /// Load the program with an XSKMAP of `queues` entries.
    pub fn load(queues: u32) -> Result<Filter, LinkError> {
        let mut open = ObjectBuilder::default()
            .open_memory(FILTER_OBJECT)
            .map_err(|e| setup("open XDP filter object", e))?;
        for mut map in open.maps_mut() {
            let entries = match map.name().to_str() {
                Some(XSKS) => queues.max(1),
                Some(ADDRS_V4) | Some(ADDRS_V6) => MAX_ADDRESSES,
                _ => continue,
            };
            map.set_max_entries(entries)
                .map_err(|e| setup("size XDP filter map", e))?;
        }
        let object = open
            .load()
            .map_err(|e| setup("load XDP filter program (root or CAP_BPF needed)", e))?;
        Ok(Filter {
            object,
            addresses: HashSet::new(),
        })
    }

    /// Attach to `ifindex` in `mode` through a BPF link.
    ///
    /// Fails with EBUSY/EEXIST when another program is attached; callers
    /// check with [`attached_program`] first to say which.
    pub fn attach(&self, ifindex: u32, mode: AttachMode) -> io::Result<Attachment> {
        let prog = self
            .object
            .progs()
            .find(|p| p.name() == PROGRAM)
            .ok_or_else(|| io::Error::other("XDP filter object has no program"))?;
        let link = sys::xdp_link_create(prog.as_fd(), ifindex, mode.flags())?;
        Ok(Attachment { _link: link, mode })
    }

    fn map(&self, name: &str) -> Result<libbpf_rs::Map<'_>, LinkError> {
        self.object
            .maps()
            .find(|m| m.name() == name)
            .ok_or_else(|| LinkError::MissingMap(name.to_owned()))
    }

    /// Point the XSKMAP entry of `queue` at the AF_XDP socket `fd`.
    pub fn insert_socket(&self, queue: u32, fd: RawFd) -> Result<(), LinkError> {
        self.map(XSKS)?
            .update(&queue.to_ne_bytes(), &fd.to_ne_bytes(), MapFlags::ANY)
            .map_err(|e| setup(&format!("put the socket of queue {queue} in the XSKMAP"), e))
    }

    /// Make the map hold exactly `addrs`: delete what went, add what came.
    pub fn set_addresses(&mut self, addrs: &[IpAddr]) -> Result<(), LinkError> {
        let wanted: HashSet<IpAddr> = addrs.iter().copied().collect();
        for family_v4 in [true, false] {
            let count = wanted.iter().filter(|a| a.is_ipv4() == family_v4).count();
            if count > MAX_ADDRESSES as usize {
                return Err(LinkError::TooManyAddresses {
                    count,
                    family: if family_v4 { 4 } else { 6 },
                    max: MAX_ADDRESSES,
                });
            }
        }
        let gone: Vec<IpAddr> = self.addresses.difference(&wanted).copied().collect();
        for addr in gone {
            let (map, key) = self.address_key(addr)?;
            match map.delete(&key) {
                Ok(()) => {}
                // Already absent: the goal is reached.
                Err(e) if e.kind() == libbpf_rs::ErrorKind::NotFound => {}
                Err(e) => return Err(setup(&format!("remove {addr} from the XDP filter"), e)),
            }
            self.addresses.remove(&addr);
        }
        let new: Vec<IpAddr> = wanted.difference(&self.addresses).copied().collect();
        for addr in new {
            let (map, key) = self.address_key(addr)?;
            map.update(&key, &[1], MapFlags::ANY)
                .map_err(|e| setup(&format!("add {addr} to the XDP filter"), e))?;
            self.addresses.insert(addr);
        }
        Ok(())
    }

    /// The map holding `addr` and its key (network byte order).
    fn address_key(&self, addr: IpAddr) -> Result<(libbpf_rs::Map<'_>, Vec<u8>), LinkError> {
        Ok(match addr {
            IpAddr::V4(a) => (self.map(ADDRS_V4)?, a.octets().to_vec()),
            IpAddr::V6(a) => (self.map(ADDRS_V6)?, a.octets().to_vec()),
        })
    }
}

/// The id and mode of an XDP program already attached to `ifindex`, if any.
pub fn attached_program(ifindex: u32) -> io::Result<Option<(u32, &'static str)>> {
    let info = sys::xdp_query(ifindex)?;
    let found = [
        (info.drv_prog_id, "driver"),
        (info.skb_prog_id, "generic"),
        (info.hw_prog_id, "offloaded"),
    ]
    .into_iter()
    .find(|(id, _)| *id != 0);
    Ok(found)
}
