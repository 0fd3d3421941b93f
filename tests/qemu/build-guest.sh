#!/usr/bin/env bash
# Build the QEMU test guest: a Debian 6.1 kernel and a busybox initramfs holding the
# failover modules, iproute2, ethtool, the vfailover binary (with its shared libraries and
# the dynamic loader), a config and tests/qemu/init.
#
#   tests/qemu/build-guest.sh OUT_DIR [VFAILOVER_BINARY]
#
# Writes OUT_DIR/vmlinuz, OUT_DIR/initramfs.cpio and OUT_DIR/kernel-version.
#
# The kernel package is downloaded once (apt-get download, Debian's archive only) and kept,
# extracted, under ${VFAILOVER_QEMU_CACHE:-OUT_DIR/../kernel-cache}; the initramfs is rebuilt
# on every call (about a second), so a new vfailover binary is always the one tested.
# The kernel version is the one linux-image-amd64 depends on, or $VFAILOVER_QEMU_KERNEL
# (a package name such as linux-image-6.1.0-56-amd64).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
out=${1:?usage: build-guest.sh OUT_DIR [VFAILOVER_BINARY]}
bin=${2:-}
mkdir -p "$out"
out=$(cd "$out" && pwd)
cache=${VFAILOVER_QEMU_CACHE:-$out/../kernel-cache}
mkdir -p "$cache"
cache=$(cd "$cache" && pwd)

need() { command -v "$1" >/dev/null || { echo "build-guest.sh: '$1' is missing: run packaging/build-deps.sh" >&2; exit 1; }; }
need flock; need busybox; need cpio; need xz; need depmod; need apt-get; need dpkg-deb; need ldd
# One build at a time per OUT_DIR: two test processes started together would otherwise
# write the same initramfs.cpio.tmp and remove each other's vmlinux link.
exec 9>"$out/.lock"
flock 9

# --- kernel (cached) ---------------------------------------------------------------------
pkg=${VFAILOVER_QEMU_KERNEL:-}
if [ -z "$pkg" ]; then
    # An already cached kernel is reused without asking apt (offline re-runs work).
    pkg=$(ls -1 "$cache" 2>/dev/null | grep -E '^linux-image-6\.1\.0-[0-9]+-amd64$' | sort -V | tail -1 || true)
fi
if [ -z "$pkg" ]; then
    pkg=$(apt-cache depends linux-image-amd64 2>/dev/null | grep -o 'linux-image-6[^ ]*-amd64' | head -1 || true)
    if [ -z "$pkg" ]; then
        apt-get update -qq >/dev/null 2>&1 || true
        pkg=$(apt-cache depends linux-image-amd64 2>/dev/null | grep -o 'linux-image-6[^ ]*-amd64' | head -1 || true)
    fi
    [ -n "$pkg" ] || { echo "build-guest.sh: no linux-image-6.1.0-*-amd64 known to apt" >&2; exit 1; }
fi
kver=${pkg#linux-image-}
kdir=$cache/$pkg
if [ ! -f "$kdir/.done" ]; then
    rm -rf "$kdir" "$cache/dl"
    mkdir -p "$cache/dl"
    (cd "$cache/dl" && apt-get download "$pkg" >/dev/null 2>&1) \
        || (cd "$cache/dl" && apt-get update -qq >/dev/null 2>&1 && apt-get download "$pkg") \
        || { echo "build-guest.sh: apt-get download $pkg failed" >&2; exit 1; }
    dpkg-deb -x "$cache"/dl/"$pkg"_*.deb "$kdir"
    # The package ships no modules.dep (its postinst runs depmod): make one.
    depmod -b "$kdir" "$kver"
    # QEMU boots an uncompressed ELF vmlinux through PVH (Debian: CONFIG_PVH=y) without
    # SeaBIOS' linuxboot and without decompressing in TCG: about 10 s less per boot.
    z=$kdir/boot/vmlinuz-$kver
    off=$(grep -abo $'\xfd7zXZ\x00' "$z" | head -1 | cut -d: -f1 || true)
    if [ -n "$off" ]; then
        tail -c +$((off + 1)) "$z" | xz -dc > "$kdir/boot/vmlinux-$kver" 2>/dev/null || true
    fi
    rm -rf "$cache/dl"
    touch "$kdir/.done"
fi
moddir=$kdir/lib/modules/$kver

# --- initramfs ---------------------------------------------------------------------------
root=$(mktemp -d "$out/root.XXXXXX")
trap 'rm -rf "$root"' EXIT
mkdir -p "$root"/{bin,sbin,usr/bin,usr/sbin,etc,proc,sys,dev,run,tmp,lib/modules,sys/fs/bpf}
cp "$(command -v busybox)" "$root/bin/busybox"
for applet in sh mount; do ln -s busybox "$root/bin/$applet"; done

# Modules in load order: every dependency before its user, as modules.dep says.
declare -A seen=()
order=()
add_mod() { # path relative to $moddir
    local rel=$1 deps dep
    [ -n "${seen[$rel]:-}" ] && return
    seen[$rel]=1
    deps=$(grep -E "^$rel:" "$moddir/modules.dep" | cut -d: -f2)
    for dep in $deps; do add_mod "$dep"; done
    order+=("$rel")
}
for m in virtio_pci virtio_net net_failover failover e1000e; do
    rel=$(grep -E "/$m\.ko(\.[a-z]+)?:" "$moddir/modules.dep" | cut -d: -f1)
    [ -n "$rel" ] || { echo "build-guest.sh: module $m not in $pkg" >&2; exit 1; }
    add_mod "$rel"
done
: > "$root/etc/modules"
for rel in "${order[@]}"; do
    cp "$moddir/$rel" "$root/lib/modules/"
    basename "$rel" >> "$root/etc/modules"
done

# Dynamically linked programs and everything they load, loader included.
copy_with_libs() { # src dst-in-root
    local src=$1 dst=$2 lib
    mkdir -p "$root/$(dirname "$dst")"
    cp -L "$src" "$root/$dst"
    for lib in $(ldd "$src" 2>/dev/null | grep -oE '/[^ ]+' | sort -u); do
        [ -e "$root$lib" ] && continue
        mkdir -p "$root$(dirname "$lib")"
        cp -L "$lib" "$root$lib"
    done
}
copy_with_libs "$(command -v ip)" /sbin/ip
copy_with_libs "$(command -v bridge)" /sbin/bridge
copy_with_libs "$(command -v ethtool)" /sbin/ethtool
if [ -n "$bin" ]; then
    [ -x "$bin" ] || { echo "build-guest.sh: $bin is not an executable" >&2; exit 1; }
    copy_with_libs "$bin" /usr/sbin/vfailover
    # The release profile keeps debug info: strip it to keep the initramfs small.
    if command -v strip >/dev/null; then strip --strip-debug "$root/usr/sbin/vfailover"; fi
fi
# glibc's loader also wants its own path to exist under /lib64 on x86-64.
[ -e "$root/lib64/ld-linux-x86-64.so.2" ] || { echo "build-guest.sh: the dynamic loader was not collected" >&2; exit 1; }

cp "$here/init" "$root/init"
chmod 755 "$root/init"
cp "$here/vfailover.toml" "$root/etc/vfailover.toml"
echo "root:x:0:0:root:/root:/bin/sh" > "$root/etc/passwd"
echo "root:x:0:" > "$root/etc/group"
echo "vfailover:x:999:" >> "$root/etc/group"

(cd "$root" && find . -mindepth 1 | LC_ALL=C sort | cpio -o -H newc --quiet) > "$out/initramfs.cpio.tmp"
mv "$out/initramfs.cpio.tmp" "$out/initramfs.cpio"
cp "$kdir/boot/vmlinuz-$kver" "$out/vmlinuz"
if [ -s "$kdir/boot/vmlinux-$kver" ] && head -c 4 "$kdir/boot/vmlinux-$kver" | grep -q ELF; then
    # Replaced in one rename: a QEMU of another test starting now still finds it.
    ln -sfn "$kdir/boot/vmlinux-$kver" "$out/vmlinux.tmp"
    mv -T "$out/vmlinux.tmp" "$out/vmlinux"
else
    rm -f "$out/vmlinux"
fi
echo "$kver" > "$out/kernel-version"
echo "guest: kernel $kver, initramfs $(du -h "$out/initramfs.cpio" | cut -f1), modules: $(tr '\n' ' ' < "$root/etc/modules")"
