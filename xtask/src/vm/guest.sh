#!/bin/sh
# PID 1 after switch_root, on the host's root (read-only 9p): make the places the tests
# write to, run the job the host left in the shared directory, report its exit status there
# and power off. Output goes to the serial console, which the host prints.
set -u

fail() {
    echo "guest: $*; powering off" >&2
    poweroff_now
}

poweroff_now() {
    sync
    echo o >/proc/sysrq-trigger
    # The power-off runs asynchronously; PID 1 must not exit before it (a kernel panic).
    while :; do sleep 60; done
}

mount -t proc proc /proc || { echo "guest: mounting /proc failed" >&2; exit 1; }
mount -t sysfs sysfs /sys || fail "mounting /sys failed"
mount -t devtmpfs devtmpfs /dev || fail "mounting /dev failed"
# /run holds `ip netns` files and the shared directory's mount point, /tmp the agents' dirs.
mount -t tmpfs -o mode=0755 tmpfs /run || fail "mounting /run failed"
mount -t tmpfs -o mode=1777 tmpfs /tmp || fail "mounting /tmp failed"
mount -t cgroup2 cgroup2 /sys/fs/cgroup || fail "mounting cgroup2 failed"
mount -t bpf bpf /sys/fs/bpf || fail "mounting bpffs failed"
mkdir -p /run/weft-vm
mount -t 9p -o trans=virtio,version=9p2000.L share /run/weft-vm ||
    fail "mounting the shared directory failed"
# The workspace and its target directory, if the tmpfs mounts above hid them (a clone
# under /tmp): mounted again, read-only, at their own paths.
while read -r tag dir; do
    [ -d "$dir" ] && continue
    { mkdir -p "$dir" && mount -t 9p -o trans=virtio,version=9p2000.L,ro "$tag" "$dir"; } ||
        fail "mounting $dir failed"
done </run/weft-vm/mounts
ip link set lo up || fail "bringing up loopback failed"

echo "guest: $(uname -r) up after $(cut -d' ' -f1 /proc/uptime) s"
sh /run/weft-vm/job.sh
echo $? >/run/weft-vm/status
poweroff_now
