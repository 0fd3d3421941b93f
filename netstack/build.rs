//! Builds the XDP filter program (`src/xdp/filter.bpf.c`) into
//! `$OUT_DIR/filter.bpf.o`, which `src/xdp/program.rs` embeds.
//!
//! Needs `clang` (override with `$CLANG`), the BPF helper headers that
//! libbpf-sys installs (`DEP_BPF_INCLUDE`, set because we depend on
//! libbpf-sys directly) and the kernel UAPI headers of linux-libc-dev. On
//! Debian `linux/types.h` pulls in `asm/types.h`, which lives in the
//! multiarch directory (`/usr/include/x86_64-linux-gnu`): `-target bpf` does
//! not search it, so it is added by hand.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

const SOURCE: &str = "src/xdp/filter.bpf.c";

fn main() {
    println!("cargo:rerun-if-changed={SOURCE}");
    println!("cargo:rerun-if-env-changed=CLANG");

    let out = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR is set by cargo"));
    let object = out.join("filter.bpf.o");
    let bpf_include = env::var_os("DEP_BPF_INCLUDE")
        .map(PathBuf::from)
        .expect("libbpf-sys exports its headers as DEP_BPF_INCLUDE");
    let clang = env::var_os("CLANG").unwrap_or_else(|| "clang".into());

    let mut cmd = Command::new(&clang);
    cmd.args(["-target", "bpf", "-O2", "-g", "-Wall"])
        .arg("-I")
        .arg(&bpf_include);
    if let Some(dir) = multiarch_include() {
        cmd.arg("-idirafter").arg(dir);
    }
    cmd.arg("-c").arg(SOURCE).arg("-o").arg(&object);

    let status = cmd.status().unwrap_or_else(|e| {
        panic!(
            "cannot run {}: {e} (install clang to build the XDP program)",
            clang.to_string_lossy()
        )
    });
    assert!(status.success(), "clang failed to build {SOURCE}: {status}");
}

/// The Debian/Ubuntu multiarch header directory for the host, if present.
fn multiarch_include() -> Option<PathBuf> {
    let arch = env::var("CARGO_CFG_TARGET_ARCH").ok()?;
    let triple = match arch.as_str() {
        "x86_64" => "x86_64-linux-gnu",
        "aarch64" => "aarch64-linux-gnu",
        "riscv64" => "riscv64-linux-gnu",
        "powerpc64" => "powerpc64le-linux-gnu",
        "s390x" => "s390x-linux-gnu",
        _ => return None,
    };
    let dir = Path::new("/usr/include").join(triple);
    dir.is_dir().then_some(dir)
}
