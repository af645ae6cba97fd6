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
# Debian's busybox-static, keyed by the busybox version and SCRIPT's contents.
busybox_artifact() {
    local ver key
    ver=$(dpkg-query -W -f='${Version}' busybox-static)
    key=$( (echo "busybox-static $ver"; cat "$3") | sha256sum | cut -c1-16)
    echo "$VMM_CACHE/$1-$key.$2"
}
