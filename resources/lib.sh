# Shared helpers for the resources/ scripts (sourced, not run).

# Where built guest artifacts are cached, outside any clone.
VMM_CACHE="${VMM_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/vmm}"

# need_pkgs PKG... : install the Debian packages that are missing (needs root).
need_pkgs() {
    local missing=()
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    echo "installing Debian packages: ${missing[*]}" >&2
    if [ "$(id -u)" -ne 0 ]; then
        echo "error: missing packages ${missing[*]}; run as root or install them with apt-get" >&2
        return 1
    fi
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
}

# busybox_artifact NAME EXT SCRIPT: the cache path for an artifact that SCRIPT builds from
# Debian's busybox-static (and vmm-exit), keyed by the busybox version, SCRIPT's contents and
# vmm-exit's source and port.
busybox_artifact() {
    local ver key
    ver=$(dpkg-query -W -f='${Version}' busybox-static)
    key=$( (echo "busybox-static $ver port $(guest_exit_port)"; cat "$3" \
        "$(dirname "${BASH_SOURCE[0]}")"/guest-tools/*) | sha256sum | cut -c1-16)
    echo "$VMM_CACHE/$1-$key.$2"
}

# The guest exit-code port, read from its one home, boot/src/layout.rs.
guest_exit_port() {
    sed -n 's/^pub const GUEST_EXIT_CODE_PORT: u16 = \(0x[0-9a-fA-F]*\);.*/\1/p' \
        "$(dirname "${BASH_SOURCE[0]}")/../boot/src/layout.rs"
}

# install_guest_tools BINDIR: puts vmm's guest tools into a guest image's BINDIR: `vmm-exit N`
# (resources/guest-tools/vmm-exit.c, compiled statically with the port from layout.rs),
# `vmm-vsock` (vmm-vsock.c: vsock connections, for tests and examples) and `vmm-run-cmd`,
# which runs `vmmcmd="…"` and passes its status through vmm-exit.
install_guest_tools() {
    local port tools
    port=$(guest_exit_port)
    tools="$(dirname "${BASH_SOURCE[0]}")/guest-tools"
    [ -n "$port" ] || { echo "error: no GUEST_EXIT_CODE_PORT in boot/src/layout.rs" >&2; return 1; }
    gcc -static -O2 -s -DVMM_EXIT_PORT="$port" -o "$1/vmm-exit" "$tools/vmm-exit.c"
    gcc -static -O2 -s -o "$1/vmm-vsock" "$tools/vmm-vsock.c"
    install -m 0755 "$tools/vmm-run-cmd" "$1/vmm-run-cmd"
}

# vmm_init: builds resources/guest-tools/vmm-init.c (static, with the exit-code port from
# layout.rs) into the cache, keyed by its source and the port, and prints its path.
vmm_init() {
    guest_tool vmm-init
}

# guest_tool NAME: builds resources/guest-tools/NAME.c as vmm_init does (for the host side of
# a test: vmm-vsock) and prints its path.
guest_tool() {
    local src key out
    src="$(dirname "${BASH_SOURCE[0]}")/guest-tools/$1.c"
    key=$( (guest_exit_port; cat "$src") | sha256sum | cut -c1-16)
    out="$VMM_CACHE/$1-$key"
    if [ ! -x "$out" ]; then
        mkdir -p "$VMM_CACHE"
        gcc -static -O2 -s -DVMM_EXIT_PORT="$(guest_exit_port)" -o "$out.tmp" "$src"
        mv "$out.tmp" "$out"
    fi
    echo "$out"
}
