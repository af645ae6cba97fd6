#!/usr/bin/env bash
# Runs a job inside the test host (resources/build-testhost.sh): a Linux VM under QEMU TCG
# whose kernel has a kvm-amd /dev/kvm, so vmm runs there as on a machine with hardware
# virtualization, whatever this machine offers.
#
#   resources/testhost.sh JOBDIR [RESULTS_IMAGE]
#
# JOBDIR holds job.sh and the files it needs (vmm, guest kernels, disk images...); inside the
# test host they are in /job, and job.sh runs there as root. Whatever job.sh leaves in $OUT
# comes back as a tar archive written over RESULTS_IMAGE (a file of at least that size, made
# by the caller; `tar -xf RESULTS_IMAGE` unpacks it). The test host's console is this
# script's stdout: the job's output, then `TESTHOST-JOB-EXIT <code>`. The exit code is QEMU's.
#
# TESTHOST_MEMORY_MIB (default 2048) and TESTHOST_CPUS (default 2) size the test host;
# TESTHOST_KERNEL_ARGS is added to its kernel's command line (bench/nested.py passes
# init_on_free=1 there).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
. "$here/lib.sh"

jobdir=${1:?usage: testhost.sh JOBDIR [RESULTS_IMAGE]}
results=${2:-}
[ -f "$jobdir/job.sh" ] || { echo "error: $jobdir/job.sh does not exist" >&2; exit 2; }
host=$(bash "$here/build-testhost.sh")

tmp=$(mktemp -d "${TMPDIR:-/tmp}/vmm-testhost.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
# The kernel unpacks concatenated archives in order: the base, then the job under /job.
cp "$host/base.cpio" "$tmp/initrd.cpio"
mkdir -p "$tmp/root"
cp -rL "$jobdir" "$tmp/root/job"
(cd "$tmp/root" && find job | LC_ALL=C sort | cpio -o -H newc -R 0:0 --quiet) >> "$tmp/initrd.cpio"

disk=()
if [ -n "$results" ]; then
    disk=(-drive "file=$results,format=raw,if=virtio")
fi
qemu-system-x86_64 -accel tcg -cpu max -m "${TESTHOST_MEMORY_MIB:-2048}" \
    -smp "${TESTHOST_CPUS:-2}" -nodefaults -no-user-config -display none -serial stdio \
    -no-reboot -kernel "$host/vmlinuz" -initrd "$tmp/initrd.cpio" \
    -append "console=ttyS0 quiet panic=-1 ${TESTHOST_KERNEL_ARGS:-}" "${disk[@]}"
