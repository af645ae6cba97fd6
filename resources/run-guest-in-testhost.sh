#!/usr/bin/env bash
# Boots the default guest with vmm inside the test host (resources/testhost.sh): a Linux VM
# under QEMU TCG with a kvm-amd /dev/kvm, for machines whose own KVM cannot run a stock kernel
# (a cloud VM without nested virtualization, a PVM host) or that have no /dev/kvm at all.
# Extra arguments go to vmm, e.g.
#   resources/run-guest-in-testhost.sh --cpus 4 --memory 256
# VMM_KERNEL=bzImage|vmlinux picks the kernel image (default bzImage).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
kernel_dir=$(bash "$here/build-kernel.sh")
initramfs=$(bash "$here/build-initramfs.sh")
(cd "$here/.." && cargo build --release --quiet)
job=$(mktemp -d "${TMPDIR:-/tmp}/vmm-guest-job.XXXXXX")
trap 'rm -rf "$job"' EXIT
cp "$here/../target/x86_64-unknown-linux-gnu/release/vmm" "$job/vmm"
cp "$kernel_dir/${VMM_KERNEL:-bzImage}" "$job/kernel"
cp "$initramfs" "$job/initramfs.cpio.gz"
{
    printf './vmm --kernel kernel --initrd initramfs.cpio.gz --cmdline %q' \
        "console=ttyS0 reboot=k panic=-1"
    for arg in "$@"; do printf ' %q' "$arg"; done
    printf '\necho "vmm exited with $?"\n'
} > "$job/job.sh"
bash "$here/testhost.sh" "$job"
