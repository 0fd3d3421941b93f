//! The guest kernel's own TCP through unplug → migrate → replug over the
//! lab's failover stand-in (the kernel's address follows the NIC in use):
//! the baseline row of
//! the bench's stall table. Root only (skips otherwise, fails under
//! `CI=true`).

use std::time::Duration;

use vfailover::bench::resend::kernel_stalls;
use vfailover::lab::{root_or_skip, Lab, LabOptions, Ns, GUEST_KERNEL_V4, PRIMARY, STANDBY};
use vfailover::scenario::STEPS;

const STREAM: u64 = 16 << 20;
/// A sanity bound only: the kernel is the baseline, not ours to hold to a
/// stall budget, but a stream that takes this long has gone wrong.
const SANE: Duration = Duration::from_secs(10);

#[test]
fn kernel_tcp_survives_the_failover_stand_in() {
    if !root_or_skip() {
        return;
    }
    let lab = Lab::create(LabOptions::default()).unwrap();
    let cpu = std::thread::available_parallelism().map_or(0, |n| n.get() - 1);
    let run = kernel_stalls(&lab, STREAM, cpu).unwrap();
    for (step, stall) in &run.stalls {
        println!("{step:?}: longest stall {stall:?}");
    }
    println!(
        "{} MiB in {:?}, stand-in reaction {:?}",
        STREAM >> 20,
        run.duration,
        run.reaction
    );
    assert!(run.byte_exact, "the kernel's echo differs: {run:?}");
    let steps: Vec<_> = run.stalls.iter().map(|(step, _)| *step).collect();
    assert_eq!(steps, STEPS, "one stall value (or none) per step");
    assert!(run.duration < SANE, "{run:?}");

    // The lab is as before: the kernel's address on the new vf0 alone.
    let on = |dev| {
        lab.ip(Ns::Guest, &["-o", "-4", "addr", "show", "dev", dev])
            .unwrap()
            .contains(&GUEST_KERNEL_V4.to_string())
    };
    assert!(on(PRIMARY) && !on(STANDBY));
    assert!(lab.ping(Ns::Peer, GUEST_KERNEL_V4.into(), 3).unwrap());
}
