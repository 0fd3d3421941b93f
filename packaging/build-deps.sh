#!/usr/bin/env bash
# Install what building and testing vfailover needs on Debian/Ubuntu, as root.
#
# Build: clang + llvm (the XDP program, and libxdp/libbpf that xsk-rs builds
# from source), libelf, zlib, libpcap, m4, pkg-config; libclang for bindgen;
# libudev for the udev crate. Lab and tests: iproute2 (ip, bridge), ethtool,
# iputils-ping, tcpdump, util-linux (setpriv, flock).
# Packaging (build-deb.sh, check-deb.sh): dpkg-dev (shlibs for Depends) and
# binutils (strip) come with build-essential; systemd for systemd-analyze
# (verify, security), udev for udevadm (rules test), man-db to check the
# man page. Installing these packages does not start anything in a
# container: their postinsts skip services when systemd is not PID 1.
# QEMU end-to-end test (agent/tests/qemu_migration/): QEMU, a static
# busybox, cpio, kmod (depmod), xz-utils (the PVH vmlinux), nftables (its
# bridge drops QEMU's RARPs from the emulated primary, which a VF never sends).
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
apt-get update
apt-get install -y --no-install-recommends \
    build-essential clang llvm libclang-dev libelf-dev zlib1g-dev libpcap-dev \
    libudev-dev m4 pkg-config linux-libc-dev \
    iproute2 ethtool iputils-ping tcpdump util-linux ca-certificates \
    systemd udev man-db \
    qemu-system-x86 seabios ipxe-qemu busybox-static cpio kmod xz-utils nftables binutils
if ! command -v cargo >/dev/null; then
    echo "cargo is missing: install a Rust toolchain (rustup) first" >&2
    exit 1
fi
