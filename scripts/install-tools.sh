#!/usr/bin/env bash
# Installs, from apt and only when absent, the system tools the tests need:
#   test: what `cargo test` runs: python3 + venv and node + npm (the interop parts), man-db
#         (`man -l` renders the generated page), haproxy (the multi-node tests), prometheus
#         (promtool and a real Prometheus for the alert and dashboard tests), util-linux (flock);
#   ci:   all of that, plus what `.ci/run`'s package checks use: systemd (systemd-analyze),
#         systemd-container (systemd-nspawn), curl, init-system-helpers.
# Runs apt-get as root, or through passwordless sudo. Where neither is possible it names the
# missing packages and fails, so a test never passes for want of its tool.
set -euo pipefail

mode="${1:-test}"
packages=()
command -v python3 >/dev/null || packages+=(python3)
# Debian's python3 has venv but not ensurepip unless python3-venv is installed.
python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || packages+=(python3-venv)
command -v node >/dev/null || packages+=(nodejs)
command -v npm >/dev/null || packages+=(npm)
command -v flock >/dev/null || packages+=(util-linux)
command -v man >/dev/null || packages+=(man-db)
command -v haproxy >/dev/null || [[ -x /usr/sbin/haproxy ]] || packages+=(haproxy)
{ command -v prometheus >/dev/null && command -v promtool >/dev/null; } || packages+=(prometheus)
if [[ "$mode" == ci ]]; then
    command -v systemd-analyze >/dev/null || packages+=(systemd)
    command -v systemd-nspawn >/dev/null || packages+=(systemd-container)
    command -v curl >/dev/null || packages+=(curl)
    command -v deb-systemd-helper >/dev/null || packages+=(init-system-helpers)
fi
if ((${#packages[@]} == 0)); then
    echo "install-tools: nothing to install" >&2
    exit 0
fi

if [[ "$(id -u)" == 0 ]]; then
    as_root=()
elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
    as_root=(sudo -n)
else
    echo "install-tools: the tests need these Debian packages: ${packages[*]}" >&2
    echo "install-tools: run as root: apt-get install --no-install-recommends ${packages[*]}" >&2
    exit 1
fi
if ! command -v apt-get >/dev/null; then
    echo "install-tools: no apt-get here; install the equivalents of: ${packages[*]}" >&2
    exit 1
fi
echo "install-tools: apt-get install ${packages[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
"${as_root[@]}" apt-get update -qq >&2
"${as_root[@]}" apt-get install -y -qq --no-install-recommends "${packages[@]}" >&2
