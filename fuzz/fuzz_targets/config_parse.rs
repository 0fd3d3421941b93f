//! `Config::parse` on arbitrary text (the file in /etc is root's, but a
//! typo must give an error, never a crash).
//!
//! Properties: no panic; an error renders (its `FILE:LINE:COLUMN` comes
//! from spans into the text); an accepted config holds what the validator
//! promises, builds a `Stack` for every pair exactly as the daemon does
//! (`daemon::stack_config`), and its announce timing runs out.
#![no_main]

use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use vfailover::config::{Config, MAX_ADDRESSES};
use vfailover::daemon::stack_config;
use vfailover::migration::AnnounceSchedule;
use vfailover_netstack::link::memory::MemoryLink;
use vfailover_netstack::mac::MacAddr;
use vfailover_netstack::stack::Stack;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    match Config::parse(&text, "fuzz.toml") {
        Err(e) => {
            let message = e.to_string();
            assert!(message.starts_with("fuzz.toml"), "{message}");
        }
        Ok(config) => check(&config),
    }
});

fn check(config: &Config) {
    assert!(!config.pairs.is_empty());
    assert!(config.control.socket.is_absolute());
    assert!(config.announce.initial <= config.announce.max);
    assert!((1..=100).contains(&config.announce.rounds));
    assert!(config.failback.hold <= config.failback.max_hold);
    for (i, pair) in config.pairs.iter().enumerate() {
        assert!((1..=MAX_ADDRESSES).contains(&pair.addresses.len()));
        assert!((576..=9000).contains(&pair.mtu));
        assert!(!pair.name.is_empty());
        for other in &config.pairs[..i] {
            assert_ne!(other.name, pair.name);
        }
        let (standby, _) = MemoryLink::pair("standby", "peer");
        let mac = pair.primary_mac.unwrap_or(MacAddr([2, 0, 0, 0, 0, 1]));
        if let Err(e) = Stack::new(&stack_config(pair, mac), Some(Box::new(standby)), None) {
            panic!(
                "config accepted pair {} but the stack refuses it: {e}",
                pair.name
            );
        }
    }
    let start = Instant::now();
    let mut schedule = AnnounceSchedule::start(config.announce, start);
    let mut now = start;
    let mut rounds = 0;
    while let Some(due) = schedule.due() {
        assert!(due <= start + Duration::from_secs(100 * 60 + 1));
        now = now.max(due);
        assert!(schedule.fire(now));
        rounds += 1;
    }
    assert_eq!(rounds, config.announce.rounds);
}
