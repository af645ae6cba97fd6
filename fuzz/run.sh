#!/usr/bin/env bash
# Builds the fuzz targets (cargo-fuzz: libFuzzer with AddressSanitizer) and runs each one in
# turn, one core, until it has run for SECONDS or executed N inputs:
#
#   bash fuzz/run.sh --time 30                 # every target for 30 s (what CI runs)
#   bash fuzz/run.sh --runs 10000000 blk_chains  # one target, 10 million inputs
#
# The corpus each run grows is fuzz/corpus/<target> (not committed); fuzz/seeds/<target> is the
# committed seed corpus it starts from. A crash, a hang (one input for more than 10 s), a leak or
# an out-of-memory is written to fuzz/artifacts/<target>/ and fails the run; replay one with
# `fuzz/target/x86_64-unknown-linux-gnu/release/<target> <file>`.
set -euo pipefail
cd "$(dirname "$0")"

limit=(-max_total_time=30)
targets=()
while [ $# -gt 0 ]; do
    case "$1" in
        --time) limit=("-max_total_time=$2"); shift 2 ;;
        --runs) limit=("-runs=$2"); shift 2 ;;
        -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
        -*) echo "fuzz/run.sh: unknown option $1 (use --time SECONDS or --runs N)" >&2; exit 2 ;;
        *) targets+=("$1"); shift ;;
    esac
done
all=(mmio_registers blk_chains net_chains rng_chains vsock_packets kernel_loader initrd_placement snapshot_reader)
[ ${#targets[@]} -gt 0 ] || targets=("${all[@]}")

if ! command -v cargo-fuzz >/dev/null; then
    echo "fuzz/run.sh: cargo-fuzz is missing: cargo install cargo-fuzz --locked" >&2
    exit 2
fi
# cargo-fuzz passes -Zsanitizer=address, which the stable toolchain takes only with this.
export RUSTC_BOOTSTRAP=1
cargo fuzz build >/dev/null
bin=target/x86_64-unknown-linux-gnu/release

failed=0
for t in "${targets[@]}"; do
    mkdir -p "corpus/$t" "seeds/$t" "artifacts/$t" logs
    start=$(date +%s)
    if "$bin/$t" "corpus/$t" "seeds/$t" "${limit[@]}" -timeout=10 -rss_limit_mb=2048 \
        -artifact_prefix="artifacts/$t/" -print_final_stats=1 >"logs/$t.log" 2>&1; then
        verdict=ok
    else
        verdict="FAILED (see fuzz/logs/$t.log and fuzz/artifacts/$t/)"
        failed=1
    fi
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "logs/$t.log")
    echo "fuzz: $t: ${runs:-?} inputs in $(( $(date +%s) - start )) s, corpus $(ls "corpus/$t" | wc -l) files: $verdict"
    if [ "$verdict" != ok ]; then
        grep -E "panicked|ERROR|SUMMARY|Test unit written" "logs/$t.log" | head -n 5 || true
    fi
done
exit $failed
