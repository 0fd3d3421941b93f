//! What the integration tests share: the rule for tests that need root.

/// Whether a test that needs root (namespaces, XDP) can run. Outside CI a
/// non-root run skips with a message; under `CI=true` it must not skip.
pub fn can_run_as_root() -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    assert_ne!(
        std::env::var("CI").as_deref(),
        Ok("true"),
        "this test needs root (network namespaces, XDP), and CI=true does not allow skipping it"
    );
    eprintln!("skipping: this test needs root (network namespaces, XDP)");
    false
}
