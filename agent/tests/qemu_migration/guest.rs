//! Guest facts read from its console: boot, the failover trio, carrier, kernel trouble,
//! and the daemon's `status --json`.

use std::collections::HashMap;
use std::thread::{self};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::console::Console;
use crate::qemu::Qemu;
use crate::{Result, MAC, STATUS_CMD};

#[derive(Debug, Default, Clone)]
pub struct Netdevs {
    pub master: String,
    pub standby: String,
    pub primary: String,
}

pub fn parse_kv(line: &str) -> HashMap<String, String> {
    line.split_whitespace()
        .filter_map(|w| w.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Boot a source guest: `cont`, wait for the init's READY line. Returns the boot time.
pub fn boot(src: &mut Qemu) -> (Duration, Netdevs) {
    let t = Instant::now();
    src.qmp.cmd("cont", json!({})).unwrap();
    let ready = src.console.wait_line(0, Duration::from_secs(120), |s| {
        s.starts_with("@@VFO READY")
    });
    let (_, at, _) = ready.unwrap_or_else(|| {
        panic!(
            "the guest did not boot in 120 s; console:\n{}\nQEMU: {}",
            tail(&src.console, 40),
            src.log()
        )
    });
    let (_, _, nd) = src
        .console
        .wait_line(0, Duration::ZERO, |s| s.starts_with("@@VFO NETDEVS"))
        .expect("NETDEVS line before READY");
    let kv = parse_kv(&nd);
    let netdevs = Netdevs {
        master: kv.get("master").cloned().unwrap_or_default(),
        standby: kv.get("standby").cloned().unwrap_or_default(),
        primary: kv.get("primary").cloned().unwrap_or_default(),
    };
    (at - t, netdevs)
}

/// What the guest kernel prints when something is wrong in it.
pub const KERNEL_TROUBLE: [&str; 6] = [
    "BUG:",
    "Oops",
    "WARNING:",
    "Call Trace:",
    "corruption",
    "Kernel panic",
];

/// The kernel log from a little before its first trouble report, if any. Read with `dmesg`
/// (the guest's console shows only emergencies: init sets `dmesg -n 1`); from the console
/// when the guest no longer answers (an oops or panic forces its report there).
pub fn kernel_trouble(c: &mut Console) -> Option<String> {
    let log: Vec<String> = match c.run("dmesg", Duration::from_secs(20)) {
        Ok((0, out)) => out.lines().map(str::to_string).collect(),
        _ => c.lines_since(0).into_iter().map(|(_, s)| s).collect(),
    };
    let first = log
        .iter()
        .position(|s| KERNEL_TROUBLE.iter().any(|k| s.contains(k)))?;
    Some(log[first.saturating_sub(10)..].join("\n"))
}

/// The guest kernel has reported no BUG, oops, warning or corruption since it booted (or
/// since the last `dmesg -c`).
pub fn assert_kernel_quiet(c: &mut Console) {
    if let Some(report) = kernel_trouble(c) {
        panic!("{}: the guest kernel reported trouble:\n{report}", c.tag);
    }
}

pub fn tail(c: &Console, n: usize) -> String {
    let all = c.lines_since(0);
    all[all.len().saturating_sub(n)..]
        .iter()
        .map(|(_, s)| s.as_str())
        .collect::<Vec<_>>()
        .join("\n")
}

/// The three netdevs, one MAC, the right roles: from sysfs and `ip -d link` in the guest.
pub fn assert_failover_trio(c: &mut Console, nd: &Netdevs) {
    assert!(
        !nd.master.is_empty() && !nd.standby.is_empty() && !nd.primary.is_empty(),
        "not all three netdevs appeared: {nd:?}"
    );
    let (m, s, p) = (&nd.master, &nd.standby, &nd.primary);
    let lowers = c.must(&format!("ls /sys/class/net/{m} | grep ^lower_"));
    assert!(lowers.contains(&format!("lower_{s}")), "{lowers}");
    assert!(lowers.contains(&format!("lower_{p}")), "{lowers}");
    for slave in [s, p] {
        let upper = c.must(&format!(
            "basename $(readlink /sys/class/net/{slave}/master)"
        ));
        assert_eq!(upper.trim(), m.as_str(), "{slave}'s master");
    }
    let features = c.must(&format!("cat /sys/class/net/{s}/device/features"));
    let f = features.trim().as_bytes();
    assert!(f.len() >= 63 && f[62] == b'1', "no STANDBY bit: {features}");
    assert_eq!(
        c.must(&format!(
            "basename $(readlink /sys/class/net/{p}/device/driver)"
        ))
        .trim(),
        "e1000e"
    );
    for dev in [m, s, p] {
        let addr = c.must(&format!("cat /sys/class/net/{dev}/address"));
        assert_eq!(addr.trim(), MAC, "{dev}");
        let perm = c.must(&format!("/sbin/ethtool -P {dev}"));
        assert!(perm.contains(MAC), "{dev}: {perm}");
    }
    let link = c.must(&format!("/sbin/ip -d link show {m}"));
    assert!(link.contains(MAC), "{link}");
    let slave = c.must(&format!("/sbin/ip -d link show {p}"));
    assert!(slave.contains(&format!("master {m}")), "{slave}");
}

/// Until the primary has carrier (TCG autonegotiation takes seconds); bounded.
pub fn wait_primary_carrier(c: &mut Console, nd: &Netdevs) -> Duration {
    let t = Instant::now();
    let cmd = format!("cat /sys/class/net/{}/carrier", nd.primary);
    while c
        .run(&cmd, Duration::from_secs(10))
        .map(|(_, o)| o.trim() == "1")
        != Ok(true)
    {
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "the primary has no carrier after 30 s"
        );
        thread::sleep(Duration::from_millis(100));
    }
    t.elapsed()
}

/// Guest-announce bit (21) as the standby's driver sees it.
pub fn guest_announce_bit(c: &mut Console, nd: &Netdevs) -> bool {
    let f = c.must(&format!(
        "cat /sys/class/net/{}/device/features",
        nd.standby
    ));
    f.trim().as_bytes().get(21) == Some(&b'1')
}

pub fn status(c: &mut Console) -> Result<Value> {
    status_within(c, Duration::from_secs(20))
}

pub fn status_within(c: &mut Console, timeout: Duration) -> Result<Value> {
    let (rc, out) = c.run(STATUS_CMD, timeout)?;
    if rc != 0 {
        return Err(format!("status exited {rc}: {out}"));
    }
    let start = out.find('{').ok_or(format!("no JSON: {out}"))?;
    serde_json::from_str(&out[start..]).map_err(|e| format!("{e}: {out}"))
}

pub fn pair0(v: &Value) -> Value {
    v["pairs"][0].clone()
}

pub fn wait_path(c: &mut Console, path: &str, timeout: Duration) -> Value {
    let deadline = Instant::now() + timeout;
    let mut last = Err(String::new());
    while Instant::now() < deadline {
        last = status(c);
        if let Ok(v) = &last {
            if pair0(v)["path"] == path {
                return v.clone();
            }
        }
        thread::sleep(Duration::from_millis(300));
    }
    // A guest kernel in trouble explains the rest: say that first, from its start.
    assert_kernel_quiet(c);
    let log = c.run("tail -n 40 /run/vfailover.log", Duration::from_secs(10));
    panic!(
        "path did not become {path} in {timeout:?}: {last:?}; daemon log: {log:?}; console:\n{}",
        tail(c, 120)
    )
}
