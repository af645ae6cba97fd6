#!/usr/bin/env bash
# Installs the Debian packages the project needs: the guest kernel's build dependencies,
# busybox for the initramfs, the tools that build the freestanding test guests, e2fsprogs
# for the root disk, QEMU (the benchmark's point of comparison, and the nested test host), and
# curl (the API tests talk to --api-socket with it).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
. "$here/lib.sh"
need_pkgs build-essential make gcc binutils util-linux cpio gzip \
    linux-source-6.1 flex bison bc libelf-dev libssl-dev lz4 xz-utils busybox-static \
    python3 qemu-system-x86 e2fsprogs iproute2 acpica-tools curl
