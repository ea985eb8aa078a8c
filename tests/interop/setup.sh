#!/usr/bin/env bash
# Installs the system tools of the tests when absent (scripts/install-tools.sh), then the
# pinned third-party parts of the interop tests:
#   - tests/interop/node_modules  from package-lock.json (npm ci), for @modelcontextprotocol/server-everything
#                                 and the TS SDK 2.x client (@modelcontextprotocol/client);
#   - target/interop-venv         a Python venv with requirements.txt (the `mcp` SDK client, and
#                                 `prometheus_client` whose parser judges /metrics in the e2e tests).
# Idempotent and fast when already installed: each part records a hash of its pin file and is
# reinstalled only when the pin changes or the install is missing. Safe to run concurrently
# (serialised with flock). Needs network access to the npm registry and PyPI on first run.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
venv="$root/target/interop-venv"
python="${PYTHON:-python3}"

mkdir -p "$root/target"
exec 9>"$root/target/interop-setup.lock"
flock 9

# The system tools `cargo test` uses (node, npm, python3-venv, man-db, haproxy, prometheus).
bash "$root/scripts/install-tools.sh" test

hash_of() { sha256sum "$@" | sha256sum | cut -d' ' -f1; }

# --- npm: server-everything -------------------------------------------------------------
npm_stamp="$here/node_modules/.mcpmux-interop-stamp"
npm_want="$(hash_of "$here/package.json" "$here/package-lock.json")"
if [[ ! -f "$npm_stamp" || "$(cat "$npm_stamp")" != "$npm_want" ]]; then
    echo "interop setup: npm ci in $here" >&2
    npm ci --prefix "$here" --no-audit --no-fund --loglevel=error >&2
    echo "$npm_want" >"$npm_stamp"
fi
for entry in "$here/node_modules/@modelcontextprotocol/server-everything/dist/index.js" \
    "$here/node_modules/@modelcontextprotocol/client/dist/index.mjs"; do
    [[ -f "$entry" ]] || { echo "interop setup: $entry missing after npm ci" >&2; exit 1; }
done

# --- pip: the mcp Python SDK ------------------------------------------------------------
pip_stamp="$venv/.mcpmux-interop-stamp"
pip_want="$(hash_of "$here/requirements.txt")"
if [[ ! -f "$pip_stamp" || "$(cat "$pip_stamp")" != "$pip_want" ]]; then
    echo "interop setup: creating $venv with $("$python" --version 2>&1)" >&2
    rm -rf "$venv"
    "$python" -m venv "$venv"
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-input \
        -r "$here/requirements.txt" >&2
    echo "$pip_want" >"$pip_stamp"
fi
"$venv/bin/python" -c 'import mcp.client.streamable_http' \
    || { echo "interop setup: the mcp SDK in $venv does not import" >&2; exit 1; }
"$venv/bin/python" -c 'import prometheus_client.parser' \
    || { echo "interop setup: prometheus_client in $venv does not import" >&2; exit 1; }
