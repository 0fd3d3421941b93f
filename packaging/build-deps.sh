#!/usr/bin/env bash
# Install what building and testing vfailover needs on Debian/Ubuntu, as root.
#
# Build: clang + llvm (the XDP program, and libxdp/libbpf that xsk-rs builds
# from source), libelf, zlib, libpcap, m4, pkg-config; libclang for bindgen;
# libudev for the udev crate. Lab and tests: iproute2 (ip, bridge), ethtool,
# iputils-ping, tcpdump.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
apt-get update
apt-get install -y --no-install-recommends \
    build-essential clang llvm libclang-dev libelf-dev zlib1g-dev libpcap-dev \
    libudev-dev m4 pkg-config linux-libc-dev \
    iproute2 ethtool iputils-ping tcpdump ca-certificates
if ! command -v cargo >/dev/null; then
    echo "cargo is missing: install a Rust toolchain (rustup) first" >&2
    exit 1
fi
