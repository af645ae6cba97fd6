#!/usr/bin/env bash
# Builds the "test host": a Linux VM that QEMU runs under TCG (pure emulation, no KVM needed),
# whose CPU (`-cpu max`) has AMD SVM with nested paging, so that its own kernel gets a real
# kvm-amd /dev/kvm. vmm runs inside it with the real Linux drivers on any x86_64 machine,
# including cloud VMs without nested virtualization (see resources/testhost.sh).
#
# From Debian's packages, cached by their versions and this script's hash:
#   vmlinuz    the cloud kernel (linux-image-cloud-amd64's kernel, downloaded, not installed)
#   base.cpio  an uncompressed initramfs: busybox-static, the kvm, kvm-amd, tun,
#              virtio-pci/blk and vsock/vhost-vsock modules (QEMU's vhost-vsock, for the
#              benchmarks), and an /init that loads them, runs /job/job.sh and powers off
#              (see the init below for the protocol)
#   cloud-guest.cpio.gz  the same stock kernel as a guest *of vmm*: an initramfs with its
#              virtio-mmio, virtio-blk, virtio-net and pvpanic modules, whose /init loads
#              them, prints VMM-INIT-OK and VMM-CPUS-ONLINE, runs `vmmcmd="…"` with its
#              status passed to the VMM (vmm-exit), and reboots; vmlinuz is the kernel
# Prints the cache directory on stdout; progress goes to stderr.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
. "$here/lib.sh"

need_pkgs busybox-static cpio gzip qemu-system-x86 gcc libc6-dev >&2

meta=linux-image-cloud-amd64
mkdir -p "$VMM_CACHE"
# One build at a time (tests start several test hosts at once).
exec 9>"$VMM_CACHE/.testhost.lock"
flock 9
kpkg=$(apt-cache depends "$meta" 2>/dev/null | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
if [ -z "$kpkg" ]; then
    apt-get update -qq >&2
    kpkg=$(apt-cache depends "$meta" | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
fi
[ -n "$kpkg" ] || { echo "error: cannot find the kernel package $meta depends on" >&2; exit 1; }
kver=$(apt-cache policy "$kpkg" | awk '/Candidate:/ {print $2}')
bver=$(dpkg-query -W -f='${Version}' busybox-static)
key=$( (echo "$kpkg $kver busybox-static $bver port $(guest_exit_port)"
    cat "$here/build-testhost.sh" "$here"/guest-tools/*) | sha256sum | cut -c1-16)
out="$VMM_CACHE/testhost-$key"
if [ -f "$out/vmlinuz" ] && [ -f "$out/base.cpio" ] && [ -f "$out/cloud-guest.cpio.gz" ]; then
    echo "$out"
    exit 0
fi

echo "building the test host from $kpkg $kver" >&2
tmp=$(mktemp -d "$VMM_CACHE/testhost-build.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
(cd "$tmp" && apt-get download -q "$kpkg=$kver" >&2 2>/dev/null) \
    || (cd "$tmp" && apt-get update -qq >&2 && apt-get download -q "$kpkg=$kver" >&2)
dpkg-deb -x "$tmp"/"$kpkg"_*.deb "$tmp/pkg"
release=${kpkg#linux-image-}
moddir="$tmp/pkg/lib/modules/$release/kernel"

# busybox_root DIR MODULE...: a root file system in DIR with busybox-static (every applet
# linked), /dev/console, and the package's MODULEs (paths under kernel/, without .ko, in load
# order: each after what `modinfo -F depends` says it needs), listed in lib/modules/order.
busybox_root() {
    local dir=$1 m applet
    shift
    mkdir -p "$dir"/{bin,dev,proc,sys,tmp,lib/modules}
    cp /bin/busybox "$dir/bin/busybox"
    for applet in $(/bin/busybox --list); do
        [ "$applet" = busybox ] || ln -s busybox "$dir/bin/$applet"
    done
    for m in "$@"; do
        cp "$moddir/$m.ko" "$dir/lib/modules/"
        echo "${m##*/}" >> "$dir/lib/modules/order"
    done
    mknod -m 600 "$dir/dev/console" c 5 1
}

root="$tmp/root"
busybox_root "$root" virt/lib/irqbypass arch/x86/kvm/kvm arch/x86/kvm/kvm-amd drivers/net/tun \
    drivers/virtio/virtio_ring drivers/virtio/virtio drivers/virtio/virtio_pci_modern_dev \
    drivers/virtio/virtio_pci_legacy_dev drivers/virtio/virtio_pci drivers/block/virtio_blk \
    net/vmw_vsock/vsock net/vmw_vsock/vmw_vsock_virtio_transport_common drivers/vhost/vhost_iotlb \
    drivers/vhost/vhost drivers/vhost/vhost_vsock
mkdir -p "$root/job" "$root/out"

# job.sh runs in /job with OUT=/out. The protocol with resources/testhost.sh, on the serial
# console:
#   TESTHOST-READY <uptime>       the modules are loaded and /dev/kvm exists
#   TESTHOST-NO-KVM               kvm-amd did not give a /dev/kvm
#   TESTHOST-JOB-EXIT <code>      /job/job.sh ended with <code>
# Then, if the VM has a disk (/dev/vda), everything the job left in $OUT is written to it as
# a tar archive, and the VM powers off.
cat > "$root/init" <<'INIT'
#!/bin/sh
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs -o size=75% tmpfs /tmp
exec </dev/console >/dev/console 2>&1
for m in $(cat /lib/modules/order); do
    insmod "/lib/modules/$m.ko" || echo "TESTHOST-INSMOD-FAILED $m"
done
if [ -c /dev/kvm ]; then
    echo "TESTHOST-READY $(cut -d' ' -f1 /proc/uptime)"
    cd /job && OUT=/out sh ./job.sh
    echo "TESTHOST-JOB-EXIT $?"
else
    echo "TESTHOST-NO-KVM"
fi
if [ -b /dev/vda ]; then
    tar -cf /dev/vda -C /out .
fi
sync
poweroff -f
INIT
chmod 0755 "$root/init"

# The stock kernel as a guest of vmm: it finds its devices and CPUs through ACPI alone.
guest="$tmp/guest"
busybox_root "$guest" drivers/virtio/virtio_ring drivers/virtio/virtio drivers/virtio/virtio_mmio \
    drivers/block/virtio_blk net/core/failover drivers/net/net_failover drivers/net/virtio_net \
    drivers/misc/pvpanic/pvpanic drivers/misc/pvpanic/pvpanic-mmio
install_guest_tools "$guest/bin"
cat > "$guest/init" <<'INIT'
#!/bin/sh
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
exec </dev/console >/dev/console 2>&1
for m in $(cat /lib/modules/order); do
    insmod "/lib/modules/$m.ko" || echo "VMM-INSMOD-FAILED $m"
done
echo "VMM-INIT-OK uptime=$(cat /proc/uptime)"
echo "VMM-CPUS-ONLINE $(cat /sys/devices/system/cpu/online)"
vmm-run-cmd
reboot -f
INIT
chmod 0755 "$guest/init"

mkdir -p "$out.tmp"
cp "$tmp/pkg/boot/vmlinuz-$release" "$out.tmp/vmlinuz"
find "$guest" -exec touch -h -d @0 {} +
(cd "$guest" && find . -mindepth 1 | LC_ALL=C sort | cpio -o -H newc -R 0:0 --quiet) \
    | gzip -n > "$out.tmp/cloud-guest.cpio.gz"
find "$root" -exec touch -h -d @0 {} +
(cd "$root" && find . -mindepth 1 | LC_ALL=C sort | cpio -o -H newc -R 0:0 --quiet) > "$out.tmp/base.cpio"
rm -rf "$out"
mv "$out.tmp" "$out"
echo "test host: $out ($kpkg $kver)" >&2
echo "$out"
