#!/usr/bin/env bash
# Builds a minimal busybox initramfs (gzip'd newc cpio) from Debian's busybox-static,
# cached by the hash of this script and the busybox package version.
# Its /init mounts proc, sysfs and devtmpfs, prints
#   VMM-INIT-OK uptime=<contents of /proc/uptime>
#   VMM-CPUS-ONLINE <contents of /sys/devices/system/cpu/online>
# on /dev/console, runs the command given as `vmmcmd="…"` on the kernel command line (if any)
# and passes its exit status to the VMM (`vmm-exit`), then runs `reboot -f` (boot the kernel
# with reboot=k so that the reset goes through the i8042).
# Prints the path of the .cpio.gz on stdout; progress goes to stderr.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
. "$here/lib.sh"

need_pkgs busybox-static cpio gzip gcc libc6-dev >&2

busybox=/bin/busybox
out=$(busybox_artifact initramfs cpio.gz "$here/build-initramfs.sh")
if [ -s "$out" ]; then
    echo "$out"
    exit 0
fi

echo "building initramfs from busybox-static" >&2
mkdir -p "$VMM_CACHE"
tmp=$(mktemp -d "$VMM_CACHE/initramfs-build.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
root="$tmp/root"
mkdir -p "$root/bin" "$root/sbin" "$root/dev" "$root/proc" "$root/sys" "$root/tmp" "$root/root"
cp "$busybox" "$root/bin/busybox"
chmod 0755 "$root/bin/busybox"
# The kernel opens /dev/console for init before anything is mounted.
if [ "$(id -u)" -eq 0 ]; then
    mknod -m 600 "$root/dev/console" c 5 1
    mknod -m 666 "$root/dev/null" c 1 3
else
    echo "warning: not root, no /dev/console node in the initramfs (init remounts /dev as devtmpfs)" >&2
fi
for applet in sh mount echo cat reboot poweroff sleep uname; do
    ln -s busybox "$root/bin/$applet"
done
install_guest_tools "$root/bin"

cat > "$root/init" <<'INIT'
#!/bin/sh
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
exec </dev/console >/dev/console 2>&1
echo "VMM-INIT-OK uptime=$(cat /proc/uptime)"
echo "VMM-CPUS-ONLINE $(cat /sys/devices/system/cpu/online)"
vmm-run-cmd
reboot -f
# Only reached if the reboot failed.
poweroff -f
while :; do sleep 1; done
INIT
chmod 0755 "$root/init"

# Reproducible archive: fixed mtimes, sorted names, root ownership.
find "$root" -exec touch -h -d @0 {} +
(cd "$root" && find . -mindepth 1 | LC_ALL=C sort | cpio -o -H newc -R 0:0 --quiet) \
    | gzip -9 -n > "$tmp/initramfs.cpio.gz"
mv "$tmp/initramfs.cpio.gz" "$out"
echo "initramfs: $out ($(stat -c %s "$out") bytes)" >&2
echo "$out"
