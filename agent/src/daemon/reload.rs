//! What a reload (SIGHUP, `vfailover reload`) changes, decided from the
//! running config and the new one alone.

use crate::config::Config;
use crate::pairing::PairSpec;

/// A setting only a restart changes, named.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0} cannot change on reload; restart the daemon")]
pub struct NeedsRestart(pub String);

/// A reload, in the order the daemon applies it: pairs removed, then every
/// pair of the new config in its order, started when added and updated in
/// place otherwise (addresses, gateways and services, so connections on
/// addresses that stay survive; announce settings apply from the next
/// signal, link modes from the next open).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReloadPlan {
    pub removed: Vec<String>,
    pub added: Vec<String>,
}

pub fn plan_reload(old: &Config, new: &Config) -> Result<ReloadPlan, NeedsRestart> {
    if new.control != old.control {
        return Err(NeedsRestart("[control]".into()));
    }
    if new.sysfs_root != old.sysfs_root {
        return Err(NeedsRestart("sysfs_root".into()));
    }
    // The MTU sizes the stack's buffers and its interface when it starts.
    for pair in &new.pairs {
        if let Some(before) = old.pairs.iter().find(|p| p.name == pair.name) {
            if before.mtu != pair.mtu {
                return Err(NeedsRestart(format!(
                    "pair {:?}: mtu ({} → {})",
                    pair.name, before.mtu, pair.mtu
                )));
            }
        }
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
    })
}

/// Whether going from `old` to `new` changes which devices make which pair,
/// or the failback hold: then every pair's links are detached and pairing
/// starts afresh.
pub fn repairing_needed(old: &Config, new: &Config) -> bool {
    pair_specs(new) != pair_specs(old) || new.failback != old.failback
}

/// The config that runs once `new` is applied over `old`, except that the
/// pairs named in `failed` could not take their new settings: a new one
/// does not run, a kept one runs `old`'s.
pub fn running_config(mut new: Config, old: &Config, failed: &[String]) -> Config {
    new.pairs = new
        .pairs
        .into_iter()
        .filter_map(|pair| {
            if !failed.contains(&pair.name) {
                return Some(pair);
            }
            old.pairs.iter().find(|o| o.name == pair.name).cloned()
        })
        .collect();
    new
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
        let old = config(&format!("{A}{B}"));
        let plan = plan_reload(&old, &c).unwrap();
        assert_eq!(plan.removed, ["b"]);
        assert_eq!(plan.added, ["c"]);
        assert!(repairing_needed(&old, &c));
    }

    #[test]
    fn addresses_change_in_place_devices_and_hold_restart_pairing() {
        let old = config(A);
        let addresses = config(&A.replace("10.0.0.2/24", "10.0.0.3/24"));
        assert!(!repairing_needed(&old, &addresses));
        let standby = config(&format!("{A}standby = \"eth1\"\n"));
        assert!(repairing_needed(&old, &standby));
        let hold = config(&format!("[failback]\nhold_ms = 1234\n{A}"));
        assert!(repairing_needed(&old, &hold));
    }

    #[test]
    fn the_control_socket_and_sysfs_root_need_a_restart() {
        let old = config(A);
        let socket = config(&format!("[control]\nsocket = \"/run/other.sock\"\n{A}"));
        assert_eq!(
            plan_reload(&old, &socket),
            Err(NeedsRestart("[control]".into()))
        );
        let sysfs = config(&format!("sysfs_root = \"/tmp/sys\"\n{A}"));
        assert_eq!(
            plan_reload(&old, &sysfs),
            Err(NeedsRestart("sysfs_root".into()))
        );
    }

    #[test]
    fn a_kept_pair_keeps_its_mtu_and_a_new_pair_may_have_any() {
        let old = config(A);
        let mtu = config(&format!("{A}mtu = 9000\n"));
        let refused = plan_reload(&old, &mtu).unwrap_err();
        assert_eq!(
            refused.to_string(),
            "pair \"a\": mtu (1500 → 9000) cannot change on reload; restart the daemon"
        );
        let added = config(&format!("{A}{B}mtu = 9000\n"));
        assert_eq!(plan_reload(&old, &added).unwrap().added, ["b"]);
    }

    #[test]
    fn what_runs_after_a_partial_reload() {
        let old = config(&format!("{A}{B}"));
        let c = "[[pair]]\nname = \"c\"\naddresses = [\"10.0.2.2/24\"]\n";
        let moved = A.replace("10.0.0.2/24", "10.0.0.3/24");
        let new = config(&format!("{moved}{B}{c}"));
        let failed = ["a".to_owned(), "c".to_owned()];
        let running = running_config(new.clone(), &old, &failed);
        let names: Vec<_> = running.pairs.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["a", "b"], "the failed new pair c does not run");
        assert_eq!(running.pairs[0], old.pairs[0], "a keeps its old address");
        assert_eq!(running_config(new.clone(), &old, &[]), new);
    }
}
