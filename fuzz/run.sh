#!/usr/bin/env bash
# Runs every fuzz target for a bounded time and fails on the first crash.
#
#   fuzz/run.sh                  # 60 s per target
#   FUZZ_SECONDS=20 fuzz/run.sh  # shorter, as tests/run.sh does
#   fuzz/run.sh route names      # only these targets
#
# Needs cargo-fuzz (`cargo install cargo-fuzz`). libFuzzer wants a nightly compiler;
# RUSTC_BOOTSTRAP=1 lets the pinned stable toolchain stand in for one. Corpora grow in
# fuzz/corpus/<target> (not committed); a crash leaves its input in fuzz/artifacts/.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")"

seconds=${FUZZ_SECONDS:-60}
if (($# > 0)); then
    targets=("$@")
else
    mapfile -t targets < <(cargo fuzz list)
fi

export RUSTC_BOOTSTRAP=1
cargo fuzz build
for target in "${targets[@]}"; do
    mkdir -p "corpus/$target"
    echo "fuzz/run.sh: $target for ${seconds}s"
    log=$(mktemp)
    if ! cargo fuzz run "$target" "corpus/$target" -- \
        -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 \
        -print_final_stats=1 >"$log" 2>&1; then
        tail -n 60 "$log"
        rm -f "$log"
        echo "fuzz/run.sh: $target FAILED; the input is in fuzz/artifacts/$target/" >&2
        exit 1
    fi
    # The last status line tells how far it went: runs, coverage, execs per second.
    grep -E '^#[0-9]+.*(DONE|exec/s)' "$log" | tail -n 1 | sed "s/^/  $target: /" || true
    grep -E 'stat::number_of_executed_units|stat::average_exec_per_sec' "$log" | sed "s/^/  $target: /" || true
    rm -f "$log"
done
echo "fuzz/run.sh: ${#targets[@]} target(s), ${seconds}s each, no crash"
