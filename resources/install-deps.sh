#!/usr/bin/env bash
# Installs the Debian packages the project needs: the guest kernel's build dependencies,
# busybox for the initramfs, the tools that build the freestanding test guests, e2fsprogs
# for the root disk, QEMU (the benchmark's point of comparison, and the nested test host),
# curl (the API tests talk to --api-socket with it), and what virtiofsd is built against; and
# virtiofsd and cargo-fuzz, cargo tools.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
. "$here/lib.sh"
need_pkgs build-essential make gcc binutils util-linux cpio gzip \
    linux-source-6.1 flex bison bc libelf-dev libssl-dev lz4 xz-utils busybox-static \
    python3 qemu-system-x86 e2fsprogs iproute2 acpica-tools curl libseccomp-dev libcap-ng-dev
# virtiofsd, the virtio-fs back end vmm starts for --fs (and the tests use): the maintained
# Rust daemon, built against libseccomp and libcap-ng, installed once into ~/.cargo/bin.
if ! command -v virtiofsd >/dev/null && [ ! -x "$HOME/.cargo/bin/virtiofsd" ]; then
    echo "installing virtiofsd 1.14.0 (vmm's --fs starts it)" >&2
    cargo install virtiofsd --version 1.14.0 --locked --quiet
fi
# The fuzzing driver (fuzz/run.sh), a cargo tool: installed once into ~/.cargo/bin.
if ! command -v cargo-fuzz >/dev/null; then
    echo "installing cargo-fuzz 0.13.2 (fuzz/run.sh builds the fuzz targets with it)" >&2
    cargo install cargo-fuzz --version 0.13.2 --locked --quiet
fi
