#!/usr/bin/env bash
# Boots the default guest: builds the guest kernel and initramfs if they are not cached yet,
# builds vmm (release), and runs it on the serial console. Extra arguments go to vmm, e.g.
#   resources/run-guest.sh --cpus 2 --memory 256
# VMM_KERNEL=bzImage|vmlinux picks the kernel image (default bzImage).
#
# Where this host's KVM cannot run a stock Linux kernel (no /dev/kvm, no access to it, or a
# software nested hypervisor such as PVM, which emulates guest kernel code and stops a stock
# kernel in early boot), it says so in one line and boots the same guest with vmm inside the
# test host instead (resources/run-guest-in-testhost.sh: QEMU TCG with a kvm-amd /dev/kvm).
# Either way the exit code is vmm's: 0 once the guest's /init ran and rebooted.
# VMM_NO_TESTHOST=1 runs vmm right here whatever the host.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"

# Why this host's KVM cannot boot a stock kernel, or nothing.
kvm_unfit() {
    local kvm=${VMM_KVM_PATH:-/dev/kvm}
    if [ ! -e "$kvm" ]; then
        echo "$kvm does not exist (no hardware virtualization here)"
    elif [ ! -r "$kvm" ] || [ ! -w "$kvm" ]; then
        echo "no access to $kvm (add your user to the kvm group)"
    elif [ -d /sys/module/kvm_pvm ]; then
        echo "this host's KVM is PVM, a software nested hypervisor that cannot run a stock kernel"
    fi
}
why=$(kvm_unfit)
if [ -n "$why" ] && [ -z "${VMM_NO_TESTHOST:-}" ]; then
    echo "run-guest: $why; booting the guest in the test host (QEMU TCG, a few minutes the first time)" >&2
    exec bash "$here/run-guest-in-testhost.sh" "$@"
fi
kernel_dir=$(bash "$here/build-kernel.sh")
initramfs=$(bash "$here/build-initramfs.sh")
# From the repository root, so that cargo reads .cargo/config.toml (the static build).
(cd "$here/.." && cargo build --release --quiet)
exec "$here/../target/x86_64-unknown-linux-gnu/release/vmm" \
    --kernel "$kernel_dir/${VMM_KERNEL:-bzImage}" \
    --initrd "$initramfs" \
    --cmdline "console=ttyS0 earlyprintk=ttyS0 reboot=k panic=-1" \
    "$@"
