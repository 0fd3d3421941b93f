//! End to end on real (emulated) hardware: a Debian 6.1 guest on QEMU (TCG, q35) with a
//! `virtio-net-pci,failover=on` standby and an `e1000e,failover_pair_id=` primary, both
//! on PCIe root ports, live-migrated over QMP between two QEMU processes on this machine.
//!
//! Network: one network namespace `vfq-<pid>-<rand>-host` holds a learning bridge `br0`
//! (300 s FDB ageing, so only learning moves an entry), the four taps of the source and the
//! destination QEMU (`src-s`, `src-p`, `dst-s`, `dst-p`: standby, primary) and one end of a
//! veth whose other end is `eth0` in `vfq-<pid>-<rand>-peer` (10.213.0.1/24). QEMU runs in
//! the host namespace (`ip netns exec`). Nothing else is touched; [`Net`]'s `Drop` deletes
//! both namespaces (taps, bridge and veth go with them) and [`Qemu`]'s `Drop` kills its own
//! QEMU by PID, also when a test panics.
//!
//! The guest (`tests/qemu/build-guest.sh`, `tests/qemu/init`) prints `@@VFO …` status lines
//! and `@@MON …` link events on its serial console (a unix socket chardev) and then runs a
//! shell there; [`Console::run`] wraps each command in unique sentinels.
//!
//! Phases, one test function each (they take a lock, so they never run QEMUs in parallel):
//! - `qemu_harness_failover_migration`: boot, the three netdevs with one MAC, QMP
//!   migration with the primary unplugged and plugged back, timings, peer ping gap.
//! - `qemu_ipv6_chatter_on_slaves`: the bridge FDB and the peer's ping with the slaves'
//!   IPv6 on (kernel default) and off (the udev rule's sysctl), no migration.
//! - `qemu_vfailover_guest_announce_off` / `_on`: the daemon (`vfailover run`) paired at
//!   boot, then migrated there and back (two migrations, more than the agent's migration
//!   window apart): `standby` during each, `primary` after, each counted once, a paced TCP
//!   echo byte-exact across all of them, and the agent's gratuitous ARPs seen after each
//!   (off) or never (on, policy auto). They skip with a message while the binary has no
//!   `run`/`status` subcommands.
//!
//! Gate: not root → skip (under `CI=true`: fail); no `qemu-system-x86_64` → skip (under
//! `CI=true`: fail, naming `packaging/build-deps.sh`). Knobs: `VFAILOVER_QEMU_BYTES` (TCP
//! echo size, default 4 MiB), `VFAILOVER_QEMU_KEEP=1` (keep the run directory with QEMU and
//! console logs), `VFAILOVER_QEMU_APPEND` (more guest kernel arguments, e.g. `loglevel=7`),
//! `VFAILOVER_QEMU_MIGRATIONS` (migrations per daemon test, default 2; more for a soak),
//! `VFAILOVER_QEMU_LIVE_COPY=1` (copy RAM while the guest runs, see [`live_copy`]),
//! `VFAILOVER_QEMU_BANDWIDTH` (MiB/s of a live copy, default 32), `VFAILOVER_QEMU_ACCEL`
//! (QEMU's `-accel`, default `tcg`). Run only these: `cargo test --release -p vfailover --test qemu_migration
//! -- --nocapture --test-threads=1`.

mod console;
mod guest;
mod migration;
mod net;
mod peer;
mod qemu;
mod qmp;

use std::io::Write;
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant, SystemTime};

use nix::unistd::geteuid;
use serde_json::json;
use vfailover::scenario::Stall;

use crate::guest::{
    assert_failover_trio, assert_kernel_quiet, boot, guest_announce_bit, kernel_trouble, pair0,
    status_within, wait_path, wait_primary_carrier,
};
use crate::migration::{
    assert_destination_alive, assert_replugged, migrate, migrations_per_test, ms, next_destination,
    print_times, MigrationTimes,
};
use crate::net::Net;
use crate::peer::{capture_announces, watch_peer_rtos, Echo, FdbWatch, PingStats, Pinger};
use crate::qemu::{image, GuestOpts, Qemu, Role, Taps};

const MAC: &str = "52:54:00:13:00:20";
const GUEST_KERNEL_IP: &str = "10.213.0.10";
const STACK_IP: Ipv4Addr = Ipv4Addr::new(10, 213, 0, 20);
const PEER_CIDR: &str = "10.213.0.1/24";
const STATUS_CMD: &str = "/usr/sbin/vfailover status --json --socket /run/vfailover/vfailover.sock";
type Result<T> = std::result::Result<T, String>;

fn ci() -> bool {
    std::env::var("CI").as_deref() == Ok("true")
}

/// Root and QEMU, or a skip (a failure under `CI=true`).
fn gate() -> bool {
    if !geteuid().is_root() {
        assert!(
            !ci(),
            "the QEMU test needs root (network namespaces, taps), and CI=true does not allow \
             skipping it"
        );
        eprintln!("skipping: the QEMU test needs root (network namespaces, taps)");
        return false;
    }
    for (tool, package) in [
        ("qemu-system-x86_64", "qemu-system-x86"),
        ("busybox", "busybox-static"),
        ("cpio", "cpio"),
        ("nft", "nftables"),
    ] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .stdout(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if !found {
            assert!(
                !ci(),
                "`{tool}` is missing (Debian package {package}): run packaging/build-deps.sh"
            );
            eprintln!(
                "skipping: `{tool}` is missing (Debian package {package}); run \
                 packaging/build-deps.sh"
            );
            return false;
        }
    }
    true
}

/// One QEMU test at a time: two TCG guests at once on 2 cores would distort every timing.
fn serial_lock() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

fn unique() -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let t = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!(
        "{}-{:04x}",
        std::process::id(),
        (t ^ (N.fetch_add(1, Ordering::Relaxed) as u32 * 0x9e37)) & 0xffff
    )
}

fn sh(args: &[&str]) -> Result<String> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .map_err(|e| format!("{}: {e}", args.join(" ")))?;
    if !out.status.success() {
        return Err(format!(
            "{} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

// ---------------------------------------------------------------------------------------
// Phase 1: the harness.

#[test]
fn qemu_harness_failover_migration() {
    if !gate() {
        return;
    }
    let _g = serial_lock();
    image();
    let net = Net::create().unwrap();
    let opts = GuestOpts {
        guest_announce: true,
        slave_ipv6: false,
        daemon: false,
    };
    let mut src = Qemu::spawn(&net, Role::Source, &opts).unwrap();
    let (boot_time, nd) = boot(&mut src);
    eprintln!(
        "[harness] boot (cont → init READY): {:.1} s; netdevs {nd:?}",
        boot_time.as_secs_f64()
    );
    assert!(
        src.qmp
            .events()
            .iter()
            .any(|e| e.name == "FAILOVER_NEGOTIATED" && e.data["device-id"] == "standby0"),
        "no FAILOVER_NEGOTIATED event"
    );
    // The kernel trouble check sees a report in the kernel log.
    src.console
        .must("echo '<3>vfailover-test: BUG: planted by the test' > /dev/kmsg");
    let planted = kernel_trouble(&mut src.console);
    assert!(
        planted
            .as_deref()
            .is_some_and(|r| r.contains("planted by the test")),
        "a BUG line in the kernel log was not noticed: {planted:?}"
    );
    src.console.must("dmesg -c > /dev/null");
    // What a migration can leave behind: half a command, with an open quote.
    src.console
        .stream
        .write_all(b"echo \"cut by a migr")
        .unwrap();
    assert_failover_trio(&mut src.console, &nd);
    assert!(
        guest_announce_bit(&mut src.console, &nd),
        "guest_announce=on but bit 21 is 0"
    );
    let carrier = wait_primary_carrier(&mut src.console, &nd);
    eprintln!(
        "[harness] primary carrier {:.1} s after READY",
        carrier.as_secs_f64()
    );
    let warm = Pinger::start(&net, GUEST_KERNEL_IP, 5);
    thread::sleep(Duration::from_secs(2));
    let w = warm.finish();
    assert!(
        w.replies > 0,
        "the peer cannot ping the guest kernel on the master: {w:?}"
    );
    eprintln!("[harness] FDB before migration: {:?}", net.fdb_port());

    let mut dst = Qemu::spawn(&net, Role::Destination, &opts).unwrap();
    let ping = Pinger::start(&net, GUEST_KERNEL_IP, 90);
    thread::sleep(Duration::from_millis(500));
    let fdb = FdbWatch::start(&net);
    let stop = Arc::new(AtomicBool::new(false));
    let cap = capture_announces(&net, stop.clone());
    thread::sleep(Duration::from_millis(200));
    let t = migrate(&mut src, &mut dst, &net, &nd, |_| {});
    assert!(t.unplug_requested.is_some(), "no UNPLUG_PRIMARY: {t:?}");
    assert!(t.statuses.iter().any(|s| s == "wait-unplug"), "{t:?}");
    assert_replugged(&mut dst, &nd);
    thread::sleep(Duration::from_secs(2));
    let p = ping.finish();
    stop.store(true, Ordering::Release);
    let ann = cap.join().unwrap().unwrap();
    print_times("harness", &t);
    eprintln!(
        "[harness] announcements the peer saw (no agent running): {} RARPs from the guest MAC \
         (QEMU), {} GARPs for the guest kernel's address, {} IPv6 NAs, {} GARPs for {STACK_IP}",
        ann.rarp.len(),
        ann.kernel_garp,
        ann.na,
        ann.agent_garp.len()
    );
    assert!(
        !ann.rarp.is_empty(),
        "QEMU's self-announce RARPs not seen: {ann:?}"
    );
    assert!(ann.agent_garp.is_empty(), "{ann:?}");
    eprintln!(
        "[harness] peer ping of the guest kernel ({GUEST_KERNEL_IP}, every 10 ms): {} of {} \
         answered, longest gap {:.0} ms",
        p.replies,
        p.sent,
        p.longest_gap.as_secs_f64() * 1e3
    );
    eprintln!(
        "[harness] FDB moves during migration: {:?}",
        fdb.moves().iter().map(|m| &m.1).collect::<Vec<_>>()
    );
    assert!(
        p.replies > 0 && p.longest_gap < Duration::from_secs(20),
        "{p:?}"
    );
    assert!(
        !src.alive() || src.qmp.cmd("query-status", json!({})).unwrap()["status"] == "postmigrate"
    );
    let st = dst.qmp.cmd("query-status", json!({})).unwrap();
    assert_eq!(st["status"], "running", "{st}");
    assert_kernel_quiet(&mut dst.console);
}

// ---------------------------------------------------------------------------------------
// The guest kernel's IPv6 chatter on the slaves.

fn chatter_case(slave_ipv6: bool) -> (usize, usize, PingStats, Vec<String>) {
    let net = Net::create().unwrap();
    let fdb = FdbWatch::start(&net);
    let opts = GuestOpts {
        guest_announce: true,
        slave_ipv6,
        daemon: false,
    };
    let mut src = Qemu::spawn(&net, Role::Source, &opts).unwrap();
    let (_, nd) = boot(&mut src);
    // Until the primary has carrier the master sends on the standby: that first learning
    // on `src-s` is expected. What counts is what moves the entry once the primary is up.
    wait_primary_carrier(&mut src.console, &nd);
    let since = Instant::now();
    // The kernel's RS (1 s jitter, then every 4 s, 3 in all) and DAD happen in these seconds.
    let ping = Pinger::start(&net, GUEST_KERNEL_IP, 30);
    thread::sleep(Duration::from_secs(12));
    let p = ping.finish();
    let all = fdb.moves();
    let moves: Vec<String> = all.iter().map(|m| m.1.clone()).collect();
    let to_standby = all
        .iter()
        .filter(|(at, p)| *at >= since && p == "src-s")
        .count();
    let v6 = src.console.must(&format!(
        "cat /proc/sys/net/ipv6/conf/{}/disable_ipv6 /proc/sys/net/ipv6/conf/{}/disable_ipv6",
        nd.standby, nd.primary
    ));
    eprintln!(
        "[ipv6 chatter, slaves' IPv6 {}] disable_ipv6 on standby/primary: {:?}; FDB ports of \
         the guest MAC in order since boot: {moves:?} ({to_standby} to the standby after the \
         primary's carrier); peer ping over 12 s: {} of {} answered, longest \
         gap {:.0} ms",
        if slave_ipv6 { "on" } else { "off" },
        v6.split_whitespace().collect::<Vec<_>>(),
        p.replies,
        p.sent,
        p.longest_gap.as_secs_f64() * 1e3
    );
    (moves.len(), to_standby, p, moves)
}

#[test]
fn qemu_ipv6_chatter_on_slaves() {
    if !gate() {
        return;
    }
    let _g = serial_lock();
    image();
    let (_, standby_on, ping_on, _) = chatter_case(true);
    let (_, standby_off, ping_off, moves_off) = chatter_case(false);
    eprintln!(
        "[ipv6 chatter] moves of the switch's entry to the standby's tap: {standby_on} with \
         the slaves' IPv6 on, {standby_off} with it off; longest ping gap {:.0} ms vs {:.0} ms",
        ping_on.longest_gap.as_secs_f64() * 1e3,
        ping_off.longest_gap.as_secs_f64() * 1e3
    );
    assert_eq!(
        standby_off, 0,
        "with IPv6 off on the slaves nothing should move the MAC to virtio: {moves_off:?}"
    );
}

// ---------------------------------------------------------------------------------------
// Phase 2: vfailover in the guest.

/// Whether this build's binary has the daemon and its status command yet.
fn daemon_available() -> bool {
    let bin = env!("CARGO_BIN_EXE_vfailover");
    let has = |sub: &str| {
        Command::new(bin)
            .args([sub, "--help"])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false)
    };
    if has("run") && has("status") {
        return true;
    }
    eprintln!(
        "skipping: {bin} has no `run`/`status` subcommands yet (the daemon has not landed); \
         the QEMU harness itself is covered by qemu_harness_failover_migration"
    );
    false
}

/// Longer than the agent's migration window (`migration::MIGRATION_WINDOW`, 10 s).
const BETWEEN_MIGRATIONS: Duration = Duration::from_secs(11);
/// The longest the peer's TCP echo may stand still while the guest runs
/// through the unplug (the agent's switch to the standby): below smoltcp's
/// minimum RTO (1 s) by far.
const UNPLUG_STALL_BOUND: Duration = Duration::from_millis(300);
/// The longest the peer may wait for echoed bytes once the guest runs again after the RAM
/// copy, counted from the later of the destination's `cont` and the peer's first
/// retransmission timeout after it: well below smoltcp's minimum RTO (1 s). What the peer sent
/// while the guest was stopped is lost, and a SACK peer sends it again only when later data
/// gets SACKed (its paced writes come every ~150 ms) or at its own RTO, which backs off while
/// the guest is stopped: those waits are the peer's, and they grow with the pause (measured
/// from the `stop`: 130-660 ms at pauses of 70-200 ms, 650 ms at 415 ms, 710 ms at 320 ms).
/// Measured from the `cont` and the peer's RTO: 30-225 ms in 19 migrations. Without the
/// agent's TCP resend (`VFAILOVER_QEMU_APPEND=vfo.tcp_resend=false`) the guest can wait for
/// smoltcp's own RTO: 1040 ms in 1 of 5 migrations.
const RESUMED_STALL_BOUND: Duration = Duration::from_millis(400);

fn vfailover_case(guest_announce: bool) {
    let label = if guest_announce {
        "guest_announce=on"
    } else {
        "guest_announce=off"
    };
    let bytes: u64 = std::env::var("VFAILOVER_QEMU_BYTES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4 << 20);
    let migrations = migrations_per_test();
    let net = Net::create().unwrap();
    let opts = GuestOpts {
        guest_announce,
        slave_ipv6: false,
        daemon: true,
    };
    let mut vm = Qemu::spawn(&net, Role::Source, &opts).unwrap();
    let mut taps = Taps::Src;
    let (boot_time, nd) = boot(&mut vm);
    eprintln!("[{label}] boot {:.1} s", boot_time.as_secs_f64());
    assert_eq!(guest_announce_bit(&mut vm.console, &nd), guest_announce);

    // Paired at boot, on the primary.
    let v = wait_path(&mut vm.console, "primary", Duration::from_secs(60));
    let p = pair0(&v);
    assert!(p["standby"].is_object() && p["primary"].is_object(), "{p}");
    assert_eq!(p["guest_announce"], json!(guest_announce), "{p}");
    let migrations_before = p["migrations_detected"].as_u64().unwrap_or(0);

    // The stream starts on the primary and is paced to end well after the last migration.
    let pace = Duration::from_secs(15) + (BETWEEN_MIGRATIONS * 2) * (migrations - 1);
    let echo = Echo::start(&net, bytes, pace);
    thread::sleep(Duration::from_secs(3));
    let stop = Arc::new(AtomicBool::new(false));
    let cap = capture_announces(&net, stop.clone());
    let peer_rtos = watch_peer_rtos(&net, stop.clone());
    let mut started = Vec::new();
    let mut times: Vec<MigrationTimes> = Vec::new();
    let mut announces_before = p["announces_sent"].as_u64().unwrap_or(0);
    for n in 1..=migrations {
        let mut dst = next_destination(&net, &mut taps, n, &opts);
        let mut paths_during: Vec<String> = Vec::new();
        // The agent's own clock: when it switched to the standby.
        let mut to_standby_at: Option<f64> = None;
        started.push(Instant::now());
        let t = migrate(&mut vm, &mut dst, &net, &nd, |q| {
            // From the unplug until the primary is back, the agent must be on the standby. The
            // bound: a status begun just before the source stops answers only on the
            // destination.
            if let Ok(v) = status_within(&mut q.console, Duration::from_secs(5)) {
                let p = pair0(&v);
                let path = p["path"].as_str().unwrap_or("?").to_string();
                if path == "standby" && p["last_switch"]["to"] == "standby" {
                    to_standby_at = p["last_switch"]["at_unix"].as_f64();
                }
                if paths_during.last() != Some(&path) {
                    paths_during.push(path);
                }
            }
        });
        let tag = format!("{label}, migration {n} of {migrations}");
        print_times(&tag, &t);
        eprintln!(
            "[{tag}] paths seen during the migration (the source while the guest ran there, \
             then the destination as it started): {paths_during:?}"
        );
        assert_destination_alive(&mut dst, n);
        assert!(
            paths_during.iter().any(|p| p == "standby"),
            "migration {n}: never saw path standby during the migration: {paths_during:?}"
        );
        let after = wait_path(&mut dst.console, "primary", Duration::from_secs(60));
        assert_replugged(&mut dst, &nd);
        let replugged = Instant::now();
        assert_kernel_quiet(&mut dst.console);
        // The source is done with: from here the guest lives on `dst`.
        vm = dst;
        let pa = pair0(&after);
        let back_at = pa["last_switch"]["at_unix"].as_f64();
        let on_standby = to_standby_at.zip(back_at).map(|(a, b)| b - a);
        eprintln!(
            "[{tag}] after: path {}, switches {}, migrations_detected {}, announces_sent {}; \
             on the standby {} s (the agent's clock, from its switch there to its switch back)",
            pa["path"],
            pa["switches"],
            pa["migrations_detected"],
            pa["announces_sent"],
            on_standby.map_or("?".into(), |d| format!("{d:.2}")),
        );
        times.push(t);
        assert_eq!(
            pa["migrations_detected"].as_u64(),
            Some(migrations_before + u64::from(n)),
            "each migration counts once: {pa}"
        );
        assert!(
            pa["switches"].as_u64().unwrap_or(0) >= 2 * u64::from(n),
            "{pa}"
        );
        let announces = pa["announces_sent"].as_u64().unwrap_or(0);
        if guest_announce {
            assert_eq!(
                announces, 0,
                "policy auto announced although the device does: {pa}"
            );
        } else {
            assert!(
                announces > announces_before,
                "migration {n} not announced: {pa}"
            );
        }
        announces_before = announces;
        if n < migrations {
            // The next migration must not fall in this one's window.
            thread::sleep(BETWEEN_MIGRATIONS.saturating_sub(replugged.elapsed()));
        }
    }
    let report = echo.finish();
    thread::sleep(Duration::from_secs(3));
    stop.store(true, Ordering::Release);
    let ann = cap.join().unwrap().unwrap();
    let peer_rtos = peer_rtos.join().unwrap().unwrap();
    assert_kernel_quiet(&mut vm.console);
    // The agent's GARPs, by the migration they follow.
    let after_each: Vec<Vec<Instant>> = (0..started.len())
        .map(|i| {
            let until = started.get(i + 1);
            ann.agent_garp
                .iter()
                .copied()
                .filter(|at| *at >= started[i] && until.is_none_or(|u| at < u))
                .collect()
        })
        .collect();
    let garps: Vec<usize> = after_each.iter().map(Vec::len).collect();
    for (i, (sent, t)) in after_each.iter().zip(&times).enumerate() {
        let Some(done) = t.completed_at.filter(|_| !sent.is_empty()) else {
            continue;
        };
        let since = |at: &Instant| ms(Some(at.saturating_duration_since(done)));
        eprintln!(
            "[{label}, migration {}] agent GARPs at {} after the migration completed (the \
             replug, the agent's signal here, came {} after it)",
            i + 1,
            sent.iter().map(since).collect::<Vec<_>>().join(", "),
            ms(t.replug),
        );
    }
    eprintln!(
        "[{label}] peer saw agent GARPs for {STACK_IP} after each migration {garps:?}, {} RARPs \
         (QEMU), {} kernel GARPs, {} NAs; echo: {}",
        ann.rarp.len(),
        ann.kernel_garp,
        ann.na,
        match &report {
            Ok(r) => format!(
                "{} bytes in {:.1?}, stream {}",
                r.bytes,
                r.took,
                if r.sent_sha == r.echoed_sha {
                    "intact"
                } else {
                    "DIFFERS"
                }
            ),
            Err(e) => e.clone(),
        }
    );
    let r = report.unwrap();
    assert_eq!(r.bytes, bytes);
    assert_eq!(r.sent_sha, r.echoed_sha, "the echoed stream differs");
    for (i, t) in times.iter().enumerate() {
        let end = started.get(i + 1).copied().unwrap_or_else(Instant::now);
        let completed = t.completed_at.unwrap_or(started[i]);
        // The guest stopped for the copy this long before completion.
        let stopped = completed - t.paused.unwrap_or_default();
        let running = r
            .stalls
            .iter()
            .filter(|s| s.from >= started[i] && s.to <= stopped)
            .map(Stall::length)
            .max()
            .unwrap_or_default();
        let (unplug, after) = (running, r.longest_stall(stopped, end).unwrap_or_default());
        let resumed = t.resumed_at.unwrap_or(completed);
        let rtos = peer_rtos.iter().filter(|at| (stopped..end).contains(at));
        let first_rto = peer_rtos
            .iter()
            .copied()
            .find(|at| (resumed..end).contains(at));
        // Each wait from the later of its start, the `cont` and that first peer RTO.
        let resumed_wait = r
            .stalls
            .iter()
            .filter(|s| s.overlaps(resumed, end))
            .map(|s| {
                let from = s.from.max(resumed);
                let from = first_rto
                    .filter(|at| *at <= s.to)
                    .map_or(from, |at| at.max(from));
                s.to - from
            })
            .max()
            .unwrap_or_default();
        let rel = |at: Instant| at.saturating_duration_since(started[i]).as_millis();
        let long: Vec<String> = r
            .stalls
            .iter()
            .filter(|s| s.overlaps(started[i], end) && s.length() >= Duration::from_millis(100))
            .map(|s| format!("{}..{} ms", rel(s.from), rel(s.to)))
            .collect();
        eprintln!(
            "[{label}, migration {}] longest TCP stall seen by the peer: {} from `migrate` until \
             the guest stopped for the copy (the unplug, the guest running), {} from then on \
             (the pause, {}, is part of it), {} once the guest ran again (`cont` at {} ms; \
             from the peer's first RTO if that came later); the peer's RTOs after the stop \
             came at {:?} ms from `migrate`; stalls of 100 ms or more, from `migrate`: \
             {long:?} (completed at {} ms)",
            i + 1,
            ms(Some(unplug)),
            ms(Some(after)),
            ms(t.paused),
            ms(Some(resumed_wait)),
            rel(resumed),
            rtos.map(|at| rel(*at)).collect::<Vec<_>>(),
            rel(completed),
        );
        assert!(
            unplug < UNPLUG_STALL_BOUND,
            "migration {}: TCP stood still {unplug:?} around the unplug (bound {UNPLUG_STALL_BOUND:?})",
            i + 1,
        );
        assert!(
            resumed_wait < RESUMED_STALL_BOUND,
            "migration {}: TCP stood still {resumed_wait:?} after the guest ran again (and the \
             peer's first RTO after it; bound {RESUMED_STALL_BOUND:?})",
            i + 1,
        );
    }
    eprintln!(
        "[{label}] TCP echo {} bytes in {:.1} s across {migrations} migrations, byte-exact",
        r.bytes,
        r.took.as_secs_f64()
    );
    if guest_announce {
        assert!(
            ann.agent_garp.is_empty(),
            "policy auto announced although the device does: {ann:?}"
        );
    } else {
        assert!(
            garps.iter().all(|g| *g > 0),
            "a migration without a gratuitous ARP for {STACK_IP}: {garps:?}"
        );
    }
}

#[test]
fn qemu_vfailover_guest_announce_off() {
    if !gate() || !daemon_available() {
        return;
    }
    let _g = serial_lock();
    vfailover_case(false);
}

#[test]
fn qemu_vfailover_guest_announce_on() {
    if !gate() || !daemon_available() {
        return;
    }
    let _g = serial_lock();
    vfailover_case(true);
}

/// Not in CI: back-and-forth migrations of a guest with no agent in it, only the guest
/// kernel's own traffic (the peer's pings) and a page-cache churn. It tells a guest memory
/// corruption that the agent's use of the kernel causes from one the emulated migration
/// causes. `VFAILOVER_QEMU_MIGRATIONS` (default 2) migrations; `tests/qemu/README.md`.
#[test]
#[ignore = "a soak, run on purpose: tests/qemu/README.md"]
fn qemu_soak_without_agent() {
    if !gate() {
        return;
    }
    let _g = serial_lock();
    let net = Net::create().unwrap();
    let opts = GuestOpts {
        guest_announce: false,
        slave_ipv6: false,
        daemon: false,
    };
    let mut vm = Qemu::spawn(&net, Role::Source, &opts).unwrap();
    let (_, nd) = boot(&mut vm);
    // A short-lived process every 20 ms writing a file that is removed again, as the test's
    // `vfailover status` calls do to a guest with the agent: page faults, page cache, slab
    // and LRU lists change all the time. Bounded; the guest is killed at the end anyway.
    vm.console.must(
        "(for i in $(seq 1 100000); do /sbin/ip -o link > /tmp/churn; rm -f /tmp/churn; \
         usleep 20000; done) > /dev/null 2>&1 & true",
    );
    let migrations = migrations_per_test();
    let ping = Pinger::start(&net, GUEST_KERNEL_IP, 30 * migrations);
    let mut taps = Taps::Src;
    for n in 1..=migrations {
        let mut dst = next_destination(&net, &mut taps, n, &opts);
        let t = migrate(&mut vm, &mut dst, &net, &nd, |_| {});
        print_times(&format!("no agent, migration {n} of {migrations}"), &t);
        assert_destination_alive(&mut dst, n);
        assert_replugged(&mut dst, &nd);
        assert_kernel_quiet(&mut dst.console);
        vm = dst;
        thread::sleep(Duration::from_secs(2));
    }
    let p = ping.finish();
    eprintln!(
        "[no agent] {migrations} migrations, the guest kernel's log clean after each; peer \
         ping {} of {} answered",
        p.replies, p.sent
    );
}
