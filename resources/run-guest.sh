#!/usr/bin/env bash
# Boots the default guest: builds the guest kernel and initramfs if they are not cached yet,
# builds vmm (release), and runs it on the serial console. Extra arguments go to vmm, e.g.
#   resources/run-guest.sh --cpus 2 --memory 256
# VMM_KERNEL=bzImage|vmlinux picks the kernel image (default bzImage).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
kernel_dir=$(bash "$here/build-kernel.sh")
initramfs=$(bash "$here/build-initramfs.sh")
# From the repository root, so that cargo reads .cargo/config.toml (the static build).
(cd "$here/.." && cargo build --release --quiet)
exec "$here/../target/x86_64-unknown-linux-gnu/release/vmm" \
    --kernel "$kernel_dir/${VMM_KERNEL:-bzImage}" \
    --initrd "$initramfs" \
    --cmdline "console=ttyS0 earlyprintk=ttyS0 reboot=k panic=-1" \
    "$@"
