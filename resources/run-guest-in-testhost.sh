#!/usr/bin/env bash
# Boots the default guest with vmm inside the test host (resources/testhost.sh): a Linux VM
# under QEMU TCG with a kvm-amd /dev/kvm, for machines whose own KVM cannot run a stock kernel
# (a cloud VM without nested virtualization, a PVM host) or that have no /dev/kvm at all.
# Extra arguments go to vmm, e.g.
#   resources/run-guest-in-testhost.sh --cpus 4 --memory 256
# VMM_KERNEL=bzImage|vmlinux picks the kernel image (default bzImage). The exit code is vmm's
# inside the test host (0 once the guest's /init ran and rebooted), or 1 if vmm never ended.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
kernel_dir=$(bash "$here/build-kernel.sh")
initramfs=$(bash "$here/build-initramfs.sh")
(cd "$here/.." && cargo build --release --quiet)
job=$(mktemp -d "${TMPDIR:-/tmp}/vmm-guest-job.XXXXXX")
console=$(mktemp "${TMPDIR:-/tmp}/vmm-guest-console.XXXXXX")
trap 'rm -rf "$job" "$console"' EXIT
cp "$here/../target/x86_64-unknown-linux-gnu/release/vmm" "$job/vmm"
cp "$kernel_dir/${VMM_KERNEL:-bzImage}" "$job/kernel"
cp "$initramfs" "$job/initramfs.cpio.gz"
{
    printf './vmm --kernel kernel --initrd initramfs.cpio.gz --cmdline %q' \
        "console=ttyS0 reboot=k panic=-1"
    for arg in "$@"; do printf ' %q' "$arg"; done
    printf '\necho "vmm exited with $?"\n'
} > "$job/job.sh"
bash "$here/testhost.sh" "$job" | tee "$console"
code=$(sed -n 's/^vmm exited with \([0-9]*\).*/\1/p' "$console" | tail -n 1)
exit "${code:-1}"
