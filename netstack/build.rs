//! Builds the XDP filter program (`src/xdp/filter.bpf.c`) into
//! `$OUT_DIR/filter.bpf.o`, which `src/xdp/program.rs` embeds.
//!
//! Needs `clang` (override with `$CLANG`), the BPF helper headers that
//! libbpf-sys installs (`DEP_BPF_INCLUDE`, set because we depend on
//! libbpf-sys directly) and the kernel UAPI headers of linux-libc-dev. On
//! Debian `linux/types.h` pulls in `asm/types.h`, which lives in the
//! multiarch directory (`/usr/include/x86_64-linux-gnu`): `-target bpf` does
//! not search it, so it is added by hand.
//!
//! The program may use only those headers. A C library header compiles
//! only by chance under `-target bpf`: glibc's `gnu/stubs.h` then wants
//! `gnu/stubs-32.h`, which only libc6-dev-i386 installs. So clang writes the
//! headers it read to a depfile and the build fails, on every machine, if one
//! comes from anywhere else.

use std::env;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

const SOURCE: &str = "src/xdp/filter.bpf.c";
/// Kernel UAPI header directories, relative to an include root.
const UAPI_DIRS: [&str; 3] = ["linux", "asm", "asm-generic"];

fn main() {
    println!("cargo:rerun-if-changed={SOURCE}");
    println!("cargo:rerun-if-env-changed=CLANG");

    let out = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR is set by cargo"));
    let object = out.join("filter.bpf.o");
    let depfile = out.join("filter.bpf.d");
    let bpf_include = env::var_os("DEP_BPF_INCLUDE")
        .map(PathBuf::from)
        .expect("libbpf-sys exports its headers as DEP_BPF_INCLUDE");
    let clang = env::var_os("CLANG").unwrap_or_else(|| "clang".into());
    let multiarch = multiarch_include();

    let mut cmd = Command::new(&clang);
    cmd.args(["-target", "bpf", "-O2", "-g", "-Wall"])
        .arg("-I")
        .arg(&bpf_include);
    if let Some(dir) = &multiarch {
        cmd.arg("-idirafter").arg(dir);
    }
    cmd.arg("-MD").arg("-MF").arg(&depfile);
    cmd.arg("-c").arg(SOURCE).arg("-o").arg(&object);

    let status = cmd.status().unwrap_or_else(|e| {
        panic!(
            "cannot run {}: {e} (install clang to build the XDP program)",
            clang.to_string_lossy()
        )
    });
    assert!(status.success(), "clang failed to build {SOURCE}: {status}");

    let deps = fs::read_to_string(&depfile)
        .unwrap_or_else(|e| panic!("clang wrote no depfile {}: {e}", depfile.display()));
    let mut roots = vec![PathBuf::from("/usr/include")];
    roots.extend(multiarch);
    let foreign: Vec<PathBuf> = headers(&deps)
        .filter(|h| !h.starts_with(&bpf_include) && !is_uapi(h, &roots))
        .collect();
    assert!(
        foreign.is_empty(),
        "{SOURCE} includes headers that are neither kernel UAPI ({}) nor libbpf's: {}. \
         Under -target bpf a C library header needs the 32-bit glibc stubs \
         (libc6-dev-i386), which a build machine need not have: declare what \
         you need in the program instead.",
        UAPI_DIRS.join("/, ") + "/",
        foreign
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    );
}

/// The headers in a make-style depfile (`object: source header \ ...`).
fn headers(depfile: &str) -> impl Iterator<Item = PathBuf> + '_ {
    let (_, prerequisites) = depfile.split_once(": ").unwrap_or(("", depfile));
    prerequisites
        .split_whitespace()
        .filter(|word| *word != "\\" && !word.ends_with(".c"))
        .map(PathBuf::from)
}

/// Whether `header` is `<root>/{linux,asm,asm-generic}/...` for an include
/// root; `..` in clang's paths is resolved first.
fn is_uapi(header: &Path, roots: &[PathBuf]) -> bool {
    let header = header.canonicalize().unwrap_or_else(|_| header.to_owned());
    roots.iter().any(|root| {
        header
            .strip_prefix(root)
            .ok()
            .and_then(|rest| rest.components().next())
            .is_some_and(|first| UAPI_DIRS.iter().any(|dir| first.as_os_str() == *dir))
    })
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
