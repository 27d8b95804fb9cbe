#!/usr/bin/env bash
# Fuzzes the targets of fuzz/ (issue 5, hostile input) one at a time, on the
# stable toolchain: no sanitizer (SETUP-NOTES.md), debug assertions and
# overflow checks on. Each target runs until FUZZ_RUNS executions (default
# 10 million) or FUZZ_SECONDS (default 1200), whichever comes first. A panic,
# a hang (-timeout), a single allocation over 256 MiB or a process over
# 2 GiB stops it with the input saved in fuzz/artifacts/<target>/ and this
# script failing. Inputs found go to fuzz/target/corpus/<target>/ (not
# committed). Usage:
#   bash scripts/fuzz.sh                  # every target
#   bash scripts/fuzz.sh server_token     # some: names as in `cargo fuzz list`
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
targets=("$@")
[ ${#targets[@]} -eq 0 ] && mapfile -t targets < <(cargo fuzz list)
runs=${FUZZ_RUNS:-10000000}
secs=${FUZZ_SECONDS:-1200}
flags=(--sanitizer none --debug-assertions)
cargo fuzz build "${flags[@]}"
for t in "${targets[@]}"; do
    mkdir -p "target/corpus/$t"
    log="target/fuzz-$t.log"
    echo "fuzz: $t (up to $runs executions or $secs s; log in fuzz/$log)"
    start=$(date +%s)
    status=0
    nice -n 10 cargo fuzz run "${flags[@]}" "$t" "target/corpus/$t" "corpus/$t" -- \
        -runs="$runs" -max_total_time="$secs" -timeout=10 \
        -rss_limit_mb=2048 -malloc_limit_mb=256 -print_final_stats=1 \
        >"$log" 2>&1 || status=$?
    took=$(($(date +%s) - start))
    execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo "?")
    rate=$(grep -o 'stat::average_exec_per_sec: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo "?")
    corpus=$(ls "target/corpus/$t" | wc -l)
    echo "fuzz: $t: $execs executions in ${took}s ($rate exec/s), corpus $corpus + $(ls "corpus/$t" | wc -l) seeds, exit $status"
    if [ "$status" -ne 0 ]; then
        grep -E 'panicked|ERROR|SUMMARY|Test unit written' "$log" | head -20 >&2
        exit "$status"
    fi
done
