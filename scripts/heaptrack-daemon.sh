#!/usr/bin/env bash
# Runs a command (the load bench's daemon) under heaptrack, for MCPMUX_BENCH_WRAP:
#   MCPMUX_BENCH_WRAP=scripts/heaptrack-daemon.sh cargo bench --bench load -- --only memory
#   heaptrack_print -f target/heaptrack/heaptrack.PID.zst
# `heaptrack CMD` itself would run the daemon as its child, where the bench's signals and
# RSS samples would miss it, and the bench's kill of the process group would end the
# recorder before it wrote anything. Here the daemon is exec'd in this process (same pid)
# with heaptrack's preload library, and the recorder runs in a session of its own, ending
# when the daemon closes the pipe. Needs Debian's heaptrack and zstd.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
out="${HEAPTRACK_OUT:-$root/target/heaptrack}"
lib=/usr/lib/heaptrack
mkdir -p "$out"
pipe="$out/fifo.$$"
mkfifo "$pipe"
setsid bash -c "'$lib/libexec/heaptrack_interpret' < '$pipe' | zstd -q -c > '$out/heaptrack.$$.zst'; rm -f '$pipe'" \
    </dev/null >/dev/null 2>&1 &
LD_PRELOAD="$lib/libheaptrack_preload.so" DUMP_HEAPTRACK_OUTPUT="$pipe" exec "$@"
