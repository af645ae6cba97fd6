#!/usr/bin/env bash
# Builds the default guest kernel (bzImage and vmlinux) from Debian's linux-source-6.1
# with the minimal config in kernel.config, cached by the hash of its inputs.
# Prints the cache directory that holds `bzImage`, `vmlinux` and `config`.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
. "$here/lib.sh"

need_pkgs linux-source-6.1 build-essential flex bison bc libelf-dev libssl-dev lz4 xz-utils >&2

src_tar=/usr/src/linux-source-6.1.tar.xz
src_ver=$(dpkg-query -W -f='${Version}' linux-source-6.1)
key=$( (echo "$src_ver"; cat "$here/kernel.config" "$here/build-kernel.sh") | sha256sum | cut -c1-16)
out="$VMM_CACHE/kernel-$key"
if [ -f "$out/bzImage" ] && [ -f "$out/vmlinux" ]; then
    echo "$out"
    exit 0
fi

work="$VMM_CACHE/kernel-build"
mkdir -p "$work"
if [ ! -f "$work/.extracted-$src_ver" ]; then
    echo "extracting $src_tar" >&2
    rm -rf "$work/linux-source-6.1"
    tar -C "$work" -xf "$src_tar"
    touch "$work/.extracted-$src_ver"
fi
cd "$work/linux-source-6.1"
jobs=$(nproc)
echo "configuring and building the guest kernel with $jobs jobs (several minutes)" >&2
make -s ARCH=x86_64 KCONFIG_ALLCONFIG="$here/kernel.config" allnoconfig >&2
# Check that every option the fragment asks for survived Kconfig's dependency resolution.
bad=0
while IFS= read -r line; do
    case "$line" in CONFIG_*=y) grep -qx "$line" .config || { echo "kernel config: $line did not stick" >&2; bad=1; } ;; esac
done < "$here/kernel.config"
[ $bad -eq 0 ] || exit 1
nice -n 10 make -s ARCH=x86_64 -j"$jobs" bzImage >&2
mkdir -p "$out.tmp"
cp arch/x86/boot/bzImage vmlinux .config "$out.tmp/"
mv "$out.tmp/.config" "$out.tmp/config"
rm -rf "$out"
mv "$out.tmp" "$out"
echo "$out"
