#!/usr/bin/env bash
# Installs the gateways the load benchmark compares mcpmux with, pinned, under the target dir:
#   - supergateway 4.0.0 (npm)  -> $TARGET/bench-peers/node_modules   (npm ci of benches/peers/package-lock.json)
#   - mcp-proxy 0.13.0 (PyPI)   -> $TARGET/bench-peers/venv           (benches/peers/requirements.txt)
# where TARGET is $CARGO_TARGET_DIR, or target/ in the repository. `cargo bench --bench load`
# uses them when present and skips a peer that is missing. Idempotent: a part is reinstalled
# only when its pin file changed. Needs Node.js with npm, python3 with venv, and access to the
# npm registry and PyPI.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
pins="$root/benches/peers"
target="${CARGO_TARGET_DIR:-$root/target}"
dir="$target/bench-peers"
python="${PYTHON:-python3}"
mkdir -p "$dir"

hash_of() { sha256sum "$@" | sha256sum | cut -d' ' -f1; }

# --- npm: supergateway ------------------------------------------------------------------------
npm_stamp="$dir/node_modules/.mcpmux-bench-stamp"
npm_want="$(hash_of "$pins/package.json" "$pins/package-lock.json")"
if [[ ! -f "$npm_stamp" || "$(cat "$npm_stamp")" != "$npm_want" ]]; then
    echo "bench-peers: npm ci in $dir" >&2
    cp "$pins/package.json" "$pins/package-lock.json" "$dir/"
    npm ci --prefix "$dir" --no-audit --no-fund --loglevel=error >&2
    echo "$npm_want" >"$npm_stamp"
fi
[[ -f "$dir/node_modules/supergateway/package.json" ]] \
    || { echo "bench-peers: supergateway missing after npm ci" >&2; exit 1; }

# --- pip: mcp-proxy ---------------------------------------------------------------------------
venv="$dir/venv"
pip_stamp="$venv/.mcpmux-bench-stamp"
pip_want="$(hash_of "$pins/requirements.txt")"
if [[ ! -f "$pip_stamp" || "$(cat "$pip_stamp")" != "$pip_want" ]]; then
    echo "bench-peers: creating $venv with $("$python" --version 2>&1)" >&2
    rm -rf "$venv"
    "$python" -m venv "$venv"
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-input \
        -r "$pins/requirements.txt" >&2
    echo "$pip_want" >"$pip_stamp"
fi
"$venv/bin/mcp-proxy" --version >/dev/null \
    || { echo "bench-peers: mcp-proxy in $venv does not run" >&2; exit 1; }

echo "bench-peers: supergateway $(node -p "require('$dir/node_modules/supergateway/package.json').version"), $("$venv/bin/mcp-proxy" --version 2>&1 | tail -1) in $dir" >&2
