#!/usr/bin/env bash
# Check a built vfailover .deb end to end, as root (CI runs this):
# contents, conffile, control fields, install, `vfailover --version`, the
# man page, `systemd-analyze verify` and `security` on the installed unit,
# the udev rules (packaging/test-udev-rules.sh), remove and purge (the
# group must be gone again).
#
# Usage: packaging/check-deb.sh PATH/TO/vfailover_<version>_amd64.deb
# Needs packaging/build-deps.sh (systemd, udev, man-db). Works where
# systemd is not PID 1 (containers, CI).
set -euo pipefail

DEB=${1:?usage: $0 DEB}
DEB=$(realpath "$DEB")
HERE=$(cd "$(dirname "$0")" && pwd)
# Highest acceptable `systemd-analyze security` exposure, times 10.
MAX_EXPOSURE=${VFAILOVER_MAX_EXPOSURE:-25}

[ "$(id -u)" = 0 ] || { echo "check-deb.sh needs root (dpkg -i)" >&2; exit 1; }
fail() { echo "FAIL: $*" >&2; exit 1; }
step() { printf '\n== %s\n' "$*"; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

need_pkg() { # COMMAND PACKAGE
    command -v "$1" >/dev/null && return
    echo "installing $2 for $1"
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "$2" >/dev/null
}
need_pkg systemd-analyze systemd
need_pkg udevadm udev

step "name"
case "$(basename "$DEB")" in
    vfailover_*_amd64.deb) echo "$(basename "$DEB")" ;;
    *) fail "$(basename "$DEB") is not vfailover_<version>_amd64.deb" ;;
esac

step "contents (dpkg -c)"
dpkg-deb -c "$DEB" | tee "$tmp/contents"
for path in \
    ./usr/bin/vfailover \
    ./lib/systemd/system/vfailover.service \
    ./lib/udev/rules.d/80-vfailover.rules \
    ./etc/vfailover/vfailover.toml \
    ./usr/share/man/man8/vfailover.8.gz \
    ./usr/share/doc/vfailover/README.md \
    ./usr/share/doc/vfailover/SECURITY.md \
    ./usr/share/doc/vfailover/copyright \
    ./usr/share/doc/vfailover/examples/10-vfailover-slave.network
do
    awk '{print $6}' "$tmp/contents" | grep -qxF "$path" || fail "$path missing from the package"
done
grep -E ' \./usr/bin/vfailover$' "$tmp/contents" | grep -qE '^-rwxr-xr-x (root/root|0/0) ' \
    || fail "/usr/bin/vfailover is not 0755 root:root"
echo "all required paths present"

step "control files (dpkg-deb -e)"
dpkg-deb -e "$DEB" "$tmp/DEBIAN"
ls -l "$tmp/DEBIAN"
cat "$tmp/DEBIAN/control"
grep -qx /etc/vfailover/vfailover.toml "$tmp/DEBIAN/conffiles" \
    || fail "/etc/vfailover/vfailover.toml is not a conffile"
echo "conffiles: $(tr '\n' ' ' < "$tmp/DEBIAN/conffiles")"
for s in postinst prerm postrm; do
    [ -x "$tmp/DEBIAN/$s" ] || fail "maintainer script $s missing or not executable"
    sh -n "$tmp/DEBIAN/$s" || fail "$s: syntax error"
done
depends=$(sed -n 's/^Depends: //p' "$tmp/DEBIAN/control")
case "$depends" in *libc6*) ;; *) fail "Depends ($depends) lacks the computed shared-library dependencies" ;; esac
echo "Depends: $depends"
if grep -q '^Description: \[generated from Rust crate' "$tmp/DEBIAN/control"; then
    echo "WARNING: no package summary: add description = \"...\" to [package] in agent/Cargo.toml"
fi

step "install (dpkg -i)"
if dpkg -s vfailover >/dev/null 2>&1; then
    echo "vfailover is installed already: purging it first"
    dpkg --purge vfailover
fi
dpkg -i "$DEB"
dpkg -s vfailover | grep -qx 'Status: install ok installed' || fail "not installed"
getent group vfailover || fail "group vfailover was not created"

step "vfailover --version"
version=$(vfailover --version)
echo "$version"
deb_version=$(dpkg-deb -f "$DEB" Version)
case "$version" in "vfailover ${deb_version%%-*}"*) ;; *) fail "--version says '$version', package is $deb_version" ;; esac

step "vfailover validate: the shipped config needs only its addresses"
if vfailover validate --config /etc/vfailover/vfailover.toml 2>"$tmp/validate.err"; then
    fail "the shipped config validated without addresses"
fi
cat "$tmp/validate.err"
grep -q 'addresses: no addresses' "$tmp/validate.err" || fail "validate did not name the missing addresses"
sed -e 's|^    # "192.0.2.10/24",|    "192.0.2.10/24",|' -e 's|^    # "2001:db8::10/64",|    "2001:db8::10/64",|' \
    /etc/vfailover/vfailover.toml >"$tmp/edited.toml"
vfailover validate --config "$tmp/edited.toml" || fail "the shipped config with addresses is not valid"

step "man page"
if command -v man >/dev/null; then
    man -w vfailover
    MANWIDTH=80 man vfailover 2>"$tmp/man.err" | head -n 12
    [ ! -s "$tmp/man.err" ] || { cat "$tmp/man.err"; fail "man vfailover printed warnings"; }
else
    echo "man not installed: skipped"
fi

step "systemd-analyze verify"
# Outside a booted systemd (containers, CI) verify works on the unit files
# alone; it may still mention the missing manager ("System has not been
# booted with systemd", "Failed to connect to bus", /run/systemd, cgroup
# controllers): those lines are reported but tolerated. Anything about the
# unit itself (unknown key, bad value, missing binary or man page) fails,
# and so does a non-zero exit.
rc=0
systemd-analyze verify /lib/systemd/system/vfailover.service >"$tmp/verify" 2>&1 || rc=$?
cat "$tmp/verify"
grep -viE 'not been booted|connect to bus|/run/systemd|cgroup|No such file or directory.*/run/|Failed to (setup|initialize) (manager|unit)|Operation not permitted|proc|boot' \
    "$tmp/verify" > "$tmp/verify.unit" || true
if grep -E 'vfailover' "$tmp/verify.unit"; then
    fail "systemd-analyze verify complains about the unit"
fi
[ $rc = 0 ] || fail "systemd-analyze verify exited $rc"
echo "verify: clean"

step "systemd-analyze security --offline=true"
systemd-analyze security --offline=true --no-pager /lib/systemd/system/vfailover.service > "$tmp/security" 2>&1 || true
grep -E '^✗' "$tmp/security" || true
score=$(grep -o 'Overall exposure level for vfailover.service: [0-9.]*' "$tmp/security" | awk '{print $NF}')
[ -n "$score" ] || { cat "$tmp/security"; fail "no exposure score"; }
echo "exposure score: $score (lower is better; limit $((MAX_EXPOSURE / 10)).$((MAX_EXPOSURE % 10)))"
# The same check systemd does with --threshold, on a 0-100 scale.
[ "$(echo "$score" | tr -d .)" -le "$MAX_EXPOSURE" ] || fail "exposure $score above the limit"

step "udev rules (installed file)"
"$HERE/test-udev-rules.sh" /lib/udev/rules.d/80-vfailover.rules

step "remove (dpkg -r)"
dpkg -r vfailover
[ ! -e /usr/bin/vfailover ] || fail "/usr/bin/vfailover still there after remove"
[ ! -e /lib/systemd/system/vfailover.service ] || fail "unit still there after remove"
[ ! -e /lib/udev/rules.d/80-vfailover.rules ] || fail "udev rules still there after remove"
[ -e /etc/vfailover/vfailover.toml ] || fail "conffile removed by dpkg -r (should stay until purge)"
echo "removed; conffile kept"

step "purge (dpkg -P)"
dpkg -P vfailover
[ ! -e /etc/vfailover/vfailover.toml ] || fail "conffile still there after purge"
[ ! -d /etc/vfailover ] || fail "/etc/vfailover still there after purge"
if getent group vfailover; then fail "group vfailover still there after purge"; fi
leftover=$(find /etc/systemd/system -name 'vfailover.service*' 2>/dev/null)
[ -z "$leftover" ] || fail "systemd links left after purge: $leftover"
dpkg -s vfailover >/dev/null 2>&1 && fail "package still known to dpkg after purge"
echo "purged; group removed"

printf '\nPASS: %s (exposure %s)\n' "$(basename "$DEB")" "$score"
