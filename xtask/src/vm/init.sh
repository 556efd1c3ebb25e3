# PID 1 in the initramfs (the host puts `#!/bin/busybox sh` and GUEST=... above this): load
# the virtio 9p drivers, mount the host's root read-only and hand over to the guest script
# on it. Only busybox is here; the host's own tools take over after switch_root.
bb=/bin/busybox

fail() {
    echo "initramfs: $*; powering off" >&2
    $bb poweroff -f
}

# /modules/NN-name.ko: dependencies first (the host ordered them from their modinfo).
for module in /modules/*.ko; do
    [ -e "$module" ] || break
    $bb insmod "$module" || fail "insmod $module failed"
done
$bb mkdir -p /newroot
# The largest msize virtio allows and the page cache (cache=loose): with 9p's defaults every
# exec reads the binary and its libraries again in small requests, which took ~20 s of the
# guest's setup and seconds per test binary. The root is read-only and does not change
# under a run, so caching it is safe.
$bb mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=512000,cache=loose root /newroot ||
    fail "mounting the host's root over 9p failed"
exec $bb switch_root /newroot "$GUEST"
