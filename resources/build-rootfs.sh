#!/usr/bin/env bash
# Builds a small ext4 root disk image from Debian's busybox-static (mkfs.ext4 -d), cached by
# the hash of this script and the busybox version. Its /sbin/init mounts proc and sysfs,
# prints `VMM-ROOTFS-OK <contents of /etc/vmm-rootfs-id>`, runs the command given as
# `vmmcmd="…"` on the kernel command line (if any) and passes its exit status to the VMM
# (`vmm-exit`), then reboots (boot with reboot=k).
# Prints the image's path on stdout. Copy it before booting it read-write: the cached image
# is the pristine one.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
. "$here/lib.sh"

need_pkgs busybox-static e2fsprogs gcc libc6-dev >&2

out=$(busybox_artifact rootfs ext4 "$here/build-rootfs.sh")
if [ -s "$out" ]; then
    echo "$out"
    exit 0
fi

echo "building ext4 root disk from busybox-static" >&2
mkdir -p "$VMM_CACHE"
tmp=$(mktemp -d "$VMM_CACHE/rootfs-build.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
root="$tmp/root"
mkdir -p "$root"/{bin,sbin,etc,dev,proc,sys,tmp,root,mnt}
cp /bin/busybox "$root/bin/busybox"
for applet in sh mount umount echo cat ls reboot poweroff sleep uname sync mkdir \
        ifconfig ip route ping nc sha256sum dd httpd wget dmesg; do
    ln -s busybox "$root/bin/$applet"
done
install_guest_tools "$root/bin"
basename "$out" .ext4 | sed 's/^rootfs-/vmm-rootfs /' > "$root/etc/vmm-rootfs-id"
cat > "$root/sbin/init" <<'INIT'
#!/bin/sh
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
exec </dev/console >/dev/console 2>&1
echo "VMM-ROOTFS-OK $(cat /etc/vmm-rootfs-id)"
vmm-run-cmd
sync
reboot -f
INIT
chmod 0755 "$root/sbin/init"
# 16 MiB, no journal (a small test disk), files owned by root, reproducible UUID and times.
E2FSPROGS_FAKE_TIME=1 mkfs.ext4 -q -F -L vmm-root -O ^has_journal -E root_owner=0:0 \
    -U 6d6d7600-0000-4000-8000-000000000001 -d "$root" "$tmp/rootfs.ext4" 16M >&2
mv "$tmp/rootfs.ext4" "$out"
echo "rootfs: $out ($(stat -c %s "$out") bytes)" >&2
echo "$out"
