//! What a reload (SIGHUP, `vfailover reload`) changes, decided from the
//! running config and the new one alone.

use crate::config::Config;
use crate::pairing::PairSpec;

/// The settings only a restart changes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("[control] and sysfs_root cannot change on reload; restart the daemon")]
pub struct NeedsRestart;

/// A reload, in the order the daemon applies it: pairs removed, then every
/// pair of the new config in its order, started when added and updated in
/// place otherwise (addresses, gateways and services, so connections on
/// addresses that stay survive; announce settings apply from the next
/// signal, link modes from the next open).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReloadPlan {
    pub removed: Vec<String>,
    pub added: Vec<String>,
    /// Which devices make which pair, or the failback hold, changed: every
    /// pair's links are detached and pairing starts afresh.
    pub restart_pairing: bool,
}

pub fn plan_reload(old: &Config, new: &Config) -> Result<ReloadPlan, NeedsRestart> {
    if new.control != old.control || new.sysfs_root != old.sysfs_root {
        return Err(NeedsRestart);
    }
    let names = |c: &Config| c.pairs.iter().map(|p| p.name.clone()).collect::<Vec<_>>();
    let (old_names, new_names) = (names(old), names(new));
    Ok(ReloadPlan {
        removed: old_names
            .iter()
            .filter(|n| !new_names.contains(n))
            .cloned()
            .collect(),
        added: new_names
            .iter()
            .filter(|n| !old_names.contains(n))
            .cloned()
            .collect(),
        restart_pairing: pair_specs(new) != pair_specs(old) || new.failback != old.failback,
    })
}

pub fn pair_specs(config: &Config) -> Vec<PairSpec> {
    config
        .pairs
        .iter()
        .map(|p| PairSpec {
            name: p.name.clone(),
            standby: p.standby.clone(),
            primary_mac: p.primary_mac,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(text: &str) -> Config {
        Config::parse(text, "test").unwrap()
    }

    const A: &str = "[[pair]]\nname = \"a\"\naddresses = [\"10.0.0.2/24\"]\n";
    const B: &str = "[[pair]]\nname = \"b\"\naddresses = [\"10.0.1.2/24\"]\n";

    #[test]
    fn the_same_config_changes_nothing() {
        let c = config(&format!("{A}{B}"));
        assert_eq!(
            plan_reload(&c, &c),
            Ok(ReloadPlan {
                removed: vec![],
                added: vec![],
                restart_pairing: false
            })
        );
    }

    #[test]
    fn pairs_added_and_removed_restart_pairing() {
        let plan = plan_reload(&config(&format!("{A}{B}")), &config(&format!("{B}{A}"))).unwrap();
        assert!(plan.removed.is_empty() && plan.added.is_empty(), "{plan:?}");
        let c = config(&format!(
            "{A}\n[[pair]]\nname = \"c\"\naddresses = [\"10.0.2.2/24\"]\n"
        ));
        let plan = plan_reload(&config(&format!("{A}{B}")), &c).unwrap();
        assert_eq!(plan.removed, ["b"]);
        assert_eq!(plan.added, ["c"]);
        assert!(plan.restart_pairing);
    }

    #[test]
    fn addresses_change_in_place_devices_and_hold_restart_pairing() {
        let old = config(A);
        let addresses = config(&A.replace("10.0.0.2/24", "10.0.0.3/24"));
        assert!(!plan_reload(&old, &addresses).unwrap().restart_pairing);
        let standby = config(&format!("{A}standby = \"eth1\"\n"));
        assert!(plan_reload(&old, &standby).unwrap().restart_pairing);
        let hold = config(&format!("[failback]\nhold_ms = 1234\n{A}"));
        assert!(plan_reload(&old, &hold).unwrap().restart_pairing);
    }

    #[test]
    fn the_control_socket_and_sysfs_root_need_a_restart() {
        let old = config(A);
        let socket = config(&format!("[control]\nsocket = \"/run/other.sock\"\n{A}"));
        assert_eq!(plan_reload(&old, &socket), Err(NeedsRestart));
        let sysfs = config(&format!("sysfs_root = \"/tmp/sys\"\n{A}"));
        assert_eq!(plan_reload(&old, &sysfs), Err(NeedsRestart));
    }
}
