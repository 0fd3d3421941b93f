//! The namespaces: a host namespace with the bridge and the QEMUs' taps, a peer namespace
//! behind a veth.

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread::{self, JoinHandle};

use nix::sched::{setns, CloneFlags};

use crate::{sh, unique, Result, MAC, PEER_CIDR};

pub struct Net {
    pub host: String,
    pub peer: String,
    pub dir: PathBuf,
}

impl Net {
    pub fn create() -> Result<Net> {
        let id = unique();
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("qemu-run-{id}"));
        fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        let net = Net {
            host: format!("vfq-{id}-host"),
            peer: format!("vfq-{id}-peer"),
            dir,
        };
        // From here on Drop cleans up whatever exists.
        sh(&["ip", "netns", "add", &net.host])?;
        sh(&["ip", "netns", "add", &net.peer])?;
        let h = net.host.as_str();
        let p = net.peer.as_str();
        for ns in [h, p] {
            // No IPv6 on the fabric: the only IPv6 frames on the bridge are the guest's.
            for conf in ["all", "default"] {
                let key = format!("net.ipv6.conf.{conf}.disable_ipv6=1");
                sh(&["ip", "netns", "exec", ns, "sysctl", "-qw", &key])?;
            }
            sh(&["ip", "-n", ns, "link", "set", "lo", "up"])?;
        }
        sh(&[
            "ip",
            "-n",
            h,
            "link",
            "add",
            "br0",
            "type",
            "bridge",
            "ageing_time",
            "30000",
        ])?;
        sh(&["ip", "-n", h, "link", "set", "br0", "up"])?;
        for tap in ["src-s", "src-p", "dst-s", "dst-p"] {
            sh(&["ip", "-n", h, "tuntap", "add", "dev", tap, "mode", "tap"])?;
            sh(&["ip", "-n", h, "link", "set", tap, "master", "br0"])?;
            sh(&["ip", "-n", h, "link", "set", tap, "up"])?;
        }
        drop_primary_rarps(h)?;
        sh(&[
            "ip", "-n", h, "link", "add", "to-peer", "type", "veth", "peer", "name", "eth0",
            "netns", p,
        ])?;
        sh(&["ip", "-n", h, "link", "set", "to-peer", "master", "br0"])?;
        sh(&["ip", "-n", h, "link", "set", "to-peer", "up"])?;
        sh(&["ip", "-n", p, "addr", "add", PEER_CIDR, "dev", "eth0"])?;
        sh(&["ip", "-n", p, "link", "set", "eth0", "up"])?;
        Ok(net)
    }

    /// The bridge port the guest's MAC is learnt on, if any.
    pub fn fdb_port(&self) -> Option<String> {
        let out = sh(&["bridge", "-n", &self.host, "fdb", "show", "br", "br0"]).ok()?;
        out.lines()
            .find(|l| l.starts_with(MAC))
            .and_then(|l| l.split_whitespace().skip_while(|w| *w != "dev").nth(1))
            .map(str::to_string)
    }

    /// Run `f` on a thread inside the peer namespace (its sockets live there).
    pub fn in_peer<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> JoinHandle<std::result::Result<T, String>> {
        let path = format!("/var/run/netns/{}", self.peer);
        thread::spawn(move || {
            let ns = File::open(&path).map_err(|e| format!("{path}: {e}"))?;
            setns(&ns, CloneFlags::CLONE_NEWNET).map_err(|e| format!("setns {path}: {e}"))?;
            Ok(f())
        })
    }
}

/// QEMU's self-announce after a migration sends a RARP out of every NIC it emulates, the
/// primary's too, and the primary's comes second: the bridge then learns the guest's MAC on
/// the new primary's tap while no guest driver reads from it (the guest plugs the primary
/// 0.4-0.6 s later), and the peer's frames are lost there until the guest sends through the
/// standby. A VF (VFIO) is no QEMU NIC and never sends QEMU's RARP, so the bridge drops
/// RARPs that come from a primary's tap, before it learns from them.
fn drop_primary_rarps(h: &str) -> Result<()> {
    let nft = |rule: &str| sh(&["ip", "netns", "exec", h, "nft", rule]);
    nft("add table bridge vfq")?;
    nft("add chain bridge vfq pre { type filter hook prerouting priority -200; }")?;
    nft("add rule bridge vfq pre iifname { \"src-p\", \"dst-p\" } ether type 0x8035 drop")?;
    Ok(())
}

impl Drop for Net {
    fn drop(&mut self) {
        for ns in [&self.peer, &self.host] {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
        if std::env::var("VFAILOVER_QEMU_KEEP").as_deref() == Ok("1") {
            eprintln!("kept {}", self.dir.display());
        } else {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}
