//! One QMP migration (primary unplugged and plugged back) and its timings.

use std::sync::atomic::Ordering;
use std::thread::{self};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::guest::{assert_kernel_quiet, tail, Netdevs};
use crate::net::Net;
use crate::qemu::{GuestOpts, Qemu, Role, Taps};
use crate::qmp::Qmp;
use crate::MAC;

/// Whether the RAM copy runs while the guest runs on the source (`VFAILOVER_QEMU_LIVE_COPY=1`).
///
/// By default the source is stopped the moment QEMU starts copying RAM (QMP `stop` on the
/// `active` event, after the guest has released the primary) and the destination continued
/// once it has the guest. A live copy under QEMU 7.2's TCG corrupts guest memory now and
/// then: slab free lists, page tables, LRU lists and inodes of the migrated guest hold stale
/// data. It happens with no agent in the guest (`qemu_soak_without_agent`), more often the
/// longer the copy runs (about 1 migration in 4 at 8 MiB/s, 1 in 30 at 32 MiB/s), and with
/// `-accel tcg,thread=single` too; KVM, which a real failover guest runs on, is not used
/// here. The guest still lives through the unplug, the move and the replug as in a real
/// migration; the copy itself looks to it like a pause of a few hundred ms.
pub fn live_copy() -> bool {
    std::env::var("VFAILOVER_QEMU_LIVE_COPY").as_deref() == Ok("1")
}

/// Bytes/s for a live RAM copy: `VFAILOVER_QEMU_BANDWIDTH` MiB/s, default 32. The guest sends
/// about 90 MiB, so the copy lasts about 3 s: time for a `vfailover status` on the source's
/// console while it runs.
pub fn migration_bandwidth() -> u64 {
    let mib: u64 = std::env::var("VFAILOVER_QEMU_BANDWIDTH")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|m| *m > 0)
        .unwrap_or(32);
    mib << 20
}

/// A paused copy starts this slow, so the few ms before the `stop` lands send next to
/// nothing, and goes on at the second rate once the guest is stopped.
pub const PAUSED_COPY_START_BANDWIDTH: u64 = 1 << 20;
pub const PAUSED_COPY_BANDWIDTH: u64 = 1 << 30;

#[derive(Debug, Default)]
pub struct MigrationTimes {
    /// `migrate` → UNPLUG_PRIMARY.
    pub unplug_requested: Option<Duration>,
    /// `migrate` → the guest's RTM_DELLINK of the primary (source console).
    pub guest_released: Option<Duration>,
    /// `wait-unplug` → `active` (how long QEMU waited for the guest).
    pub wait_unplug: Option<Duration>,
    /// `migrate` → `completed`.
    pub total: Duration,
    /// When QMP said `completed`.
    pub completed_at: Option<Instant>,
    /// The guest stopped for the RAM copy: the source's `stop` → the destination's `cont`.
    pub paused: Option<Duration>,
    /// When the destination's `cont` returned: the guest runs again.
    pub resumed_at: Option<Instant>,
    /// UNPLUG_PRIMARY → `completed`.
    pub unplug_to_complete: Option<Duration>,
    /// `completed` → the primary re-registered on the destination (console).
    pub replug: Option<Duration>,
    /// `completed` → the re-plugged primary has carrier.
    pub replug_link_up: Option<Duration>,
    pub downtime_ms: Option<u64>,
    /// RAM bytes sent, MiB.
    pub ram_mib: Option<f64>,
    pub statuses: Vec<String>,
}

pub fn mon_line_is_primary(s: &str, nd: &Netdevs) -> Option<bool> {
    // "@@MON 4: eth2: <BROADCAST,MULTICAST,UP,LOWER_UP> mtu ... master eth0 state UP ..."
    let rest = s.strip_prefix("@@MON ")?;
    if rest.starts_with("Deleted") {
        return None;
    }
    let name = rest.split(": ").nth(1)?.split('@').next()?;
    if name == nd.standby || name == nd.master {
        return None;
    }
    if !rest.contains(&format!("master {}", nd.master)) {
        return None;
    }
    let flags = rest.split('<').nth(1)?.split('>').next()?;
    Some(flags.split(',').any(|f| f == "LOWER_UP") && !flags.contains("NO-CARRIER"))
}

/// Migrate the guest from `src` to `dst` (already listening; see [`live_copy`] for how RAM
/// is copied), and measure. `during` runs over and over with the source while the guest
/// runs there, and once with the destination as soon as the guest runs there.
pub fn migrate(
    src: &mut Qemu,
    dst: &mut Qemu,
    net: &Net,
    nd: &Netdevs,
    mut during: impl FnMut(&mut Qemu),
) -> MigrationTimes {
    let live = live_copy();
    let bandwidth = if live {
        migration_bandwidth()
    } else {
        PAUSED_COPY_START_BANDWIDTH
    };
    src.qmp
        .cmd(
            "migrate-set-parameters",
            json!({"max-bandwidth": bandwidth}),
        )
        .unwrap();
    src.qmp.stop_on_active.store(!live, Ordering::SeqCst);
    let src_from = src.console.len();
    let dst_from = dst.console.len();
    let t0 = Instant::now();
    src.qmp
        .cmd(
            "migrate",
            json!({"uri": format!("unix:{}", net.dir.join("migrate.sock").display())}),
        )
        .unwrap();
    let deadline = t0 + Duration::from_secs(120);
    let done = loop {
        if let Some(e) = src.qmp.events().into_iter().find(|e| {
            e.at >= t0
                && e.name == "MIGRATION"
                && matches!(
                    e.data["status"].as_str(),
                    Some("completed" | "failed" | "cancelled")
                )
        }) {
            break e;
        }
        assert!(
            Instant::now() < deadline,
            "migration did not finish in 120 s: {:?}",
            src.qmp.cmd("query-migrate", json!({}))
        );
        // Nothing more for a stopped guest's console.
        if live || stopped_at(&src.qmp, t0).is_none() {
            during(src);
        }
        thread::sleep(Duration::from_millis(10));
    };
    src.qmp.stop_on_active.store(false, Ordering::SeqCst);
    let stopped = stopped_at(&src.qmp, t0);
    let (mut paused, mut resumed_at) = (None, None);
    if !live && done.data["status"] == "completed" {
        // The source was stopped, so the destination waits for a `cont`.
        dst.qmp.cmd("cont", json!({})).unwrap();
        resumed_at = Some(Instant::now());
        paused = stopped.map(|s| s.elapsed());
        during(dst);
    }
    let info = src.qmp.cmd("query-migrate", json!({})).unwrap_or_default();
    assert_eq!(
        done.data["status"],
        "completed",
        "migration {}: {info}; source log: {}; destination log: {}",
        done.data["status"],
        src.log(),
        dst.log()
    );
    let evs = src.qmp.events();
    let ev_at = |name: &str, status: Option<&str>| {
        evs.iter()
            .filter(|e| e.at >= t0 && e.name == name)
            .find(|e| status.is_none_or(|s| e.data["status"] == s))
            .map(|e| e.at)
    };
    let unplug = ev_at("UNPLUG_PRIMARY", None);
    let wait_unplug = ev_at("MIGRATION", Some("wait-unplug"));
    let active_after = wait_unplug.and_then(|w| {
        evs.iter()
            .find(|e| e.at >= w && e.name == "MIGRATION" && e.data["status"] == "active")
            .map(|e| e.at)
    });
    let mut t = MigrationTimes {
        total: done.at - t0,
        completed_at: Some(done.at),
        paused,
        resumed_at,
        unplug_requested: unplug.map(|u| u - t0),
        wait_unplug: wait_unplug.zip(active_after).map(|(w, a)| a - w),
        unplug_to_complete: unplug.map(|u| done.at - u),
        downtime_ms: info.get("downtime").and_then(Value::as_u64),
        ram_mib: info["ram"]["transferred"]
            .as_u64()
            .map(|b| b as f64 / f64::from(1 << 20)),
        statuses: evs
            .iter()
            .filter(|e| e.at >= t0 && e.name == "MIGRATION")
            .map(|e| e.data["status"].as_str().unwrap_or("?").to_string())
            .collect(),
        ..Default::default()
    };
    let released = src
        .console
        .lines_since(src_from)
        .into_iter()
        .find(|(_, s)| s.starts_with("@@MON Deleted") && s.contains(&format!(" {}:", nd.primary)));
    t.guest_released = released.map(|(at, _)| at - t0);
    // The destination: the primary comes back (new netdev under the master), then carrier.
    let replug = dst
        .console
        .wait_line(dst_from, Duration::from_secs(30), |s| {
            mon_line_is_primary(s, nd).is_some()
        });
    t.replug = replug
        .as_ref()
        .map(|(_, at, _)| at.saturating_duration_since(done.at));
    let up = dst
        .console
        .wait_line(dst_from, Duration::from_secs(30), |s| {
            mon_line_is_primary(s, nd) == Some(true)
        });
    t.replug_link_up = up.map(|(_, at, _)| at.saturating_duration_since(done.at));
    t
}

/// When the guest was stopped (QMP `STOP`) since `t0`.
pub fn stopped_at(qmp: &Qmp, t0: Instant) -> Option<Instant> {
    qmp.events()
        .iter()
        .find(|e| e.at >= t0 && e.name == "STOP")
        .map(|e| e.at)
}

pub fn ms(d: Option<Duration>) -> String {
    d.map_or("-".into(), |d| format!("{:.0} ms", d.as_secs_f64() * 1e3))
}

pub fn print_times(label: &str, t: &MigrationTimes) {
    eprintln!(
        "[{label}] migration: total {} (guest paused for the copy {}, downtime {} ms, {} MiB \
         sent), UNPLUG_PRIMARY after {}, guest released the primary after {}, wait-unplug {}, \
         unplug→completed {}, re-plug on the destination {} after completion, its link up {} \
         after completion; states {:?}",
        ms(Some(t.total)),
        ms(t.paused),
        t.downtime_ms.map_or("-".into(), |d| d.to_string()),
        t.ram_mib.map_or("-".into(), |m| format!("{m:.0}")),
        ms(t.unplug_requested),
        ms(t.guest_released),
        ms(t.wait_unplug),
        ms(t.unplug_to_complete),
        ms(t.replug),
        ms(t.replug_link_up),
        t.statuses
    );
}

/// The guest's view after the migration: the primary is back under the master.
pub fn assert_replugged(dst: &mut Qemu, nd: &Netdevs) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = dst.console.must("/sbin/ip -o link show");
        let back = out.lines().any(|l| {
            let name = l.split(": ").nth(1).unwrap_or("");
            name != nd.master
                && name != nd.standby
                && name != "lo"
                && l.contains(&format!("master {}", nd.master))
                && l.contains(MAC)
                && l.contains("LOWER_UP")
        });
        if back {
            let lowers = dst
                .console
                .must(&format!("ls /sys/class/net/{} | grep ^lower_", nd.master));
            assert_eq!(lowers.lines().count(), 2, "{lowers}");
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the primary did not come back on the destination: {out}"
        );
        thread::sleep(Duration::from_millis(200));
    }
}

/// Migrations per `qemu_vfailover_*` test (`VFAILOVER_QEMU_MIGRATIONS`, default 2: there
/// and back). They are spaced by more than the agent's 10 s migration window, so each one
/// counts and announces on its own.
pub fn migrations_per_test() -> u32 {
    std::env::var("VFAILOVER_QEMU_MIGRATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|n| *n >= 1)
        .unwrap_or(2)
}

/// The destination of the `n`th migration of a guest: a QEMU waiting on the other tap pair.
pub fn next_destination(net: &Net, taps: &mut Taps, n: u32, opts: &GuestOpts) -> Qemu {
    *taps = taps.other();
    let name = if n == 1 {
        taps.prefix().to_string()
    } else {
        format!("{}{n}", taps.prefix())
    };
    Qemu::spawn_on(net, Role::Destination, *taps, &name, opts).unwrap()
}

/// The destination QEMU of migration `n` still runs; if not, what its guest kernel said
/// (a panic ends QEMU: `-no-reboot`), else its log and console.
pub fn assert_destination_alive(dst: &mut Qemu, n: u32) {
    if !dst.alive() {
        assert_kernel_quiet(&mut dst.console);
        panic!(
            "the destination QEMU exited after migration {n}; its log: {}\nconsole:\n{}",
            dst.log(),
            tail(&dst.console, 60)
        );
    }
}
