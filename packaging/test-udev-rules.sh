#!/usr/bin/env bash
# Test udev-rules/80-vfailover.rules with `udevadm test` against a fake
# sysfs holding a net_failover triple, as root, touching nothing outside a
# private mount + network namespace (unshare -m -n).
#
# systemd 252 has no `udevadm verify`; this checks both syntax (udevadm
# logs every line it cannot parse) and behaviour:
#   ens3      net_failover master (parent: virtio0, STANDBY bit)  -> untouched
#   ens3nsby  standby (virtio_net, bit 62, master ens3)            -> standby
#   ens4      primary (PCI e1000e, master ens3)                    -> primary
#   ens5      plain virtio_net without the STANDBY bit             -> untouched
# and the standby once more without ID_NET_DRIVER (net_setup_link gave
# nothing), for each of the actions add, change and move.
#
# Usage: packaging/test-udev-rules.sh [RULES_FILE]
set -euo pipefail

command -v udevadm >/dev/null || { echo "udevadm missing (apt-get install udev)" >&2; exit 1; }
[ "$(id -u)" = 0 ] || { echo "needs root (mount and network namespaces)" >&2; exit 1; }

if [ "${1:-}" != "--inner" ]; then
    RULES=$(realpath "${1:-$(dirname "$0")/../udev-rules/80-vfailover.rules}")
    work=$(mktemp -d)
    trap 'rm -rf "$work"' EXIT
    # sd-device refuses a syspath whose /sys is not sysfs unless told not to.
    SYSTEMD_DEVICE_VERIFY_SYSFS=0 WORK=$work unshare -m -n -- "$(realpath "$0")" --inner "$RULES"
    exit
fi
RULES=$2
mount --make-rprivate /

F=$WORK/sys
mkdir -p "$F" "$WORK/rules" "$WORK/out"
cp "$RULES" "$WORK/rules/"
bits() { python3 -c "import sys; b=['0']*64
for i in sys.argv[1:]: b[int(i)]='1'
print(''.join(b))" "$@"; }

V=devices/pci0000:00/0000:00:03.0/virtio0     # failover standby's virtio device
P=devices/pci0000:00/0000:00:04.0             # the primary (VF stand-in)
W=devices/pci0000:00/0000:00:05.0/virtio1     # an ordinary virtio-net NIC
mkdir -p "$F/bus/virtio/drivers/virtio_net" "$F/bus/pci/drivers/e1000e" "$F/class/net" \
         "$F/$V/net/ens3" "$F/$V/net/ens3nsby" "$F/$P/net/ens4" "$F/$W/net/ens5"
bits 5 16 17 21 62 > "$F/$V/features"
bits 5 16 17 21 > "$F/$W/features"
ln -s /sys/bus/virtio/drivers/virtio_net "$F/$V/driver"
ln -s /sys/bus/virtio/drivers/virtio_net "$F/$W/driver"
ln -s /sys/bus/pci/drivers/e1000e "$F/$P/driver"
ln -s /sys/bus/virtio "$F/$V/subsystem"; ln -s /sys/bus/virtio "$F/$W/subsystem"
ln -s /sys/bus/pci "$F/$P/subsystem"
for d in $V $W $P; do : > "$F/$d/uevent"; done
netdev() { # DIR NAME IFINDEX PARENT [UEVENT-EXTRA]
    local d=$F/$1
    printf 'INTERFACE=%s\nIFINDEX=%s\n%s' "$2" "$3" "${5:-}" > "$d/uevent"
    echo "$3" > "$d/ifindex"
    echo 52:54:00:12:34:56 > "$d/address"
    ln -s /sys/class/net "$d/subsystem"
    ln -s "/sys/$4" "$d/device"
    ln -s "/sys/$1" "$F/class/net/$2"
}
netdev "$V/net/ens3" ens3 2 "$V" $'ID_NET_DRIVER=net_failover\n'
netdev "$V/net/ens3nsby" ens3nsby 3 "$V" "${STANDBY_UEVENT-$'ID_NET_DRIVER=virtio_net\n'}"
netdev "$P/net/ens4" ens4 4 "$P" $'ID_NET_DRIVER=e1000e\n'
netdev "$W/net/ens5" ens5 5 "$W" $'ID_NET_DRIVER=virtio_net\n'
ln -s "/sys/$V/net/ens3" "$F/$V/net/ens3nsby/master"
ln -s "/sys/$V/net/ens3" "$F/$P/net/ens4/master"
ln -s "/sys/$V/net/ens3nsby" "$F/$V/net/ens3/lower_ens3nsby"
ln -s "/sys/$P/net/ens4" "$F/$V/net/ens3/lower_ens4"

# Real netdevs with the slaves' names in this private netns, so that the
# SYSCTL{} writes have somewhere to go and can be checked.
i=0; for n in ens3 ens3nsby ens4 ens5; do ip link add "$n" type veth peer name "peer$((i++))"; done

mount --bind "$F" /sys
mount --bind "$WORK/rules" /lib/udev/rules.d      # only our rules
mount -t tmpfs none /etc/udev/rules.d
mkdir -p /run/udev && mount -t tmpfs none /run/udev

fail=0
check() { # NAME ACTION EXPECTED-ROLE
    local out=$WORK/out/$1.$2 role wants ipv6
    udevadm test --action="$2" "/sys/class/net/$1" > "$out" 2>&1 || true
    if grep -E "$(basename "$RULES"):[0-9]+ .*(nvalid|rror|nknown|gnoring)" "$out" | grep -v "Failed to write SYSCTL" ; then
        echo "FAIL $1 $2: rules file problems (above)"; fail=1
    fi
    role=$(sed -n 's/^VFAILOVER_ROLE=//p' "$out")
    wants=$(sed -n 's/^SYSTEMD_WANTS=//p' "$out")
    ipv6=$(cat "/proc/sys/net/ipv6/conf/$1/disable_ipv6")
    local ok=1
    [ "$role" = "$3" ] || ok=0
    if [ -n "$3" ]; then
        grep -qx "NM_UNMANAGED=1" "$out" || ok=0
        grep -qx "ID_NET_MANAGED_BY=io.vfailover" "$out" || ok=0
        grep -qx "VFAILOVER_SLAVE=1" "$out" || ok=0
        [ "$ipv6" = 1 ] || ok=0
    else
        grep -q "^NM_UNMANAGED=" "$out" && ok=0
        [ "$ipv6" = 0 ] || ok=0
    fi
    if [ "$3" = standby ]; then [ "$wants" = vfailover.service ] || ok=0
    else [ -z "$wants" ] || ok=0; fi
    if [ $ok = 1 ]; then
        echo "ok   $1 $2: role=${role:-none} wants=${wants:-none} disable_ipv6=$ipv6"
    else
        echo "FAIL $1 $2: role=${role:-none} (want ${3:-none}) wants=${wants:-none} disable_ipv6=$ipv6"
        sed -n '/^DEVPATH=/,$p' "$out"; fail=1
    fi
    echo 0 > "/proc/sys/net/ipv6/conf/$1/disable_ipv6"
}
for action in add change move; do
    check ens3 $action ""
    check ens3nsby $action standby
    check ens4 $action primary
    check ens5 $action ""
    rm -f /run/udev/data/*
done
# The standby without ID_NET_DRIVER: classified through its master.
sed -i '/^ID_NET_DRIVER=/d' "$F/$V/net/ens3nsby/uevent"
check ens3nsby add standby
exit $fail
