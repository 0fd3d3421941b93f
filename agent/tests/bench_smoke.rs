//! `vfailover bench` in miniature: a few hundred milliseconds per row, 5
//! unplug/replug cycles, one migration, so CI runs every code path of the
//! benchmark without the full run. Root only (skips otherwise, fails under
//! `CI=true`).

use vfailover::bench::{self, BenchOptions};
use vfailover::lab::root_or_skip;

#[test]
fn a_tiny_bench_writes_the_table() {
    if !root_or_skip() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let output = dir.path().join("RESULTS.md");
    let options = BenchOptions::quick(env!("CARGO_BIN_EXE_vfailover").into(), output.clone());
    let results = bench::run(&options).unwrap();
    assert_eq!(results.failover.down.len(), 5);
    assert_eq!(results.failover.up.len(), 5);
    assert!(
        results.udp.iter().all(|(_, _, u)| u.answered > 0),
        "{:?}",
        results.udp
    );
    let d = &results.daemon;
    assert_eq!(
        (d.migrations, d.signals, d.announced),
        (1, 1, 1),
        "the migration was signalled and announced"
    );
    for run in &results.resend_cost {
        assert_eq!(run.windows.len(), 40, "{run:?}");
        assert!(run.ratio().is_some_and(|x| x.pairs == 20), "{run:?}");
    }
    assert_eq!(results.resend_cost.len(), 2, "echo and bulk");
    let r = &results.resend;
    assert!(
        r.stalls.len() == 3 && r.stalls.iter().all(|s| s.byte_exact && s.stalls.len() == 3),
        "{r:?}"
    );
    assert!(
        r.kernel.is_some(),
        "the guest kernel's run is missing: {r:?}"
    );
    let text = std::fs::read_to_string(&output).unwrap();
    for needle in [
        "| payload | server | requests/s |",
        "| 64 B | **stack** |",
        "| 1400 B | kernel (stack's XDP filter on vf0) |",
        "| offloads | server | Gbit/s |",
        "| VF gone → standby | **event → first frame",
        "| idle |",
        "migration signal → first gratuitous ARP",
        "| workload | TCP resend | windows | MiB/s (median) |",
        "| TCP resend | SACK | after unplug | after migrate |",
        "| guest kernel TCP (address moved to the NIC in use, GARP after migration) | on |",
        "| aim | measured | met |",
    ] {
        assert!(text.contains(needle), "{needle:?} missing from:\n{text}");
    }
}
