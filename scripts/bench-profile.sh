#!/usr/bin/env bash
# Profiles the mcpmux daemon under the load bench's c=64 run and draws a flame graph:
#   bash scripts/bench-profile.sh [OUT.svg] [SECONDS]
# OUT defaults to benches/results/flamegraph-c64.svg, SECONDS (of sampling) to 10.
# Needs `perf` (Debian: linux-perf) and inferno's `inferno-collapse-perf` and
# `inferno-flamegraph` (cargo install inferno --version =0.12.8 --locked). Samples every
# thread of the daemon (not its child) at 999 Hz with DWARF call graphs; no timing is
# asserted, the picture is the output.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
out="${1:-$root/benches/results/flamegraph-c64.svg}"
secs="${2:-10}"
for tool in perf inferno-collapse-perf inferno-flamegraph; do
    command -v "$tool" >/dev/null || { echo "bench-profile: $tool not found" >&2; exit 1; }
done
scratch="$(mktemp -d)"
bench_pid=""
cleanup() {
    if [[ -n "$bench_pid" ]] && kill -0 "$bench_pid" 2>/dev/null; then
        kill "$bench_pid" 2>/dev/null || true
        wait "$bench_pid" 2>/dev/null || true
    fi
    rm -rf "$scratch"
}
trap cleanup EXIT

cd "$root"
cargo bench --bench load --no-run >&2
# One round: direct stdio first, then mcpmux at c=64 for long enough to sample.
cargo bench --bench load -- --only throughput --rounds 1 --warmup 2 \
    --duration "$((secs + 6))" --out "$scratch/load.json" 2>"$scratch/bench.log" &
bench_pid=$!

# The mcpmux run starts once the direct-stdio line is printed; its daemon is the bench's
# `mcpmux` child (started before the first run, alive until the end).
deadline=$((SECONDS + 300))
until grep -q "direct stdio, 64 in flight" "$scratch/bench.log"; do
    (( SECONDS < deadline )) || { echo "bench-profile: bench did not reach c=64" >&2; cat "$scratch/bench.log" >&2; exit 1; }
    kill -0 "$bench_pid" 2>/dev/null || { cat "$scratch/bench.log" >&2; exit 1; }
    sleep 0.5
done
daemon="$(pgrep -P "$(pgrep -f -n 'load-[0-9a-f]* --only throughput')" -x mcpmux | sed -n 1p)"
[[ -n "$daemon" ]] || { echo "bench-profile: no mcpmux daemon found" >&2; exit 1; }
sleep 3 # sessions open and the warm-up passes
echo "bench-profile: sampling mcpmux pid $daemon for $secs s" >&2
perf record -F 999 --call-graph dwarf,32768 -p "$daemon" -o "$scratch/perf.data" -- sleep "$secs" 2>&1 \
    | grep -v '^\[ perf record' >&2 || true
wait "$bench_pid" || true
bench_pid=""
grep -E "mcpmux|direct" "$scratch/bench.log" >&2 || true
mkdir -p "$(dirname "$out")"
perf script -i "$scratch/perf.data" 2>/dev/null \
    | inferno-collapse-perf --all \
    | tee "$scratch/folded" \
    | inferno-flamegraph --minwidth 0.5 --title "mcpmux at c=64, tools/call echo (perf, DWARF, 999 Hz, $secs s)" >"$out"
folded="${CARGO_TARGET_DIR:-$root/target}/bench-results/$(basename "${out%.svg}").folded"
mkdir -p "$(dirname "$folded")"
cp "$scratch/folded" "$folded"
echo "bench-profile: wrote $out (stacks: $folded)" >&2
