#!/usr/bin/env bash
# Checks the shipped systemd units with `systemd-analyze verify`, failing on any complaint.
#
# verify resolves ExecStart= on the host and loads the units' dependencies (sysinit.target,
# ...), so it cannot check units meant for /usr/local/bin/mcpmux on a build machine as is.
# It runs instead under --root on a throwaway tree holding the host's system units, the units
# under test in /etc/systemd/system, and stand-in executables at the paths the units name.
# Works without systemd running as PID 1 (containers, CI). verify reports unknown keys and
# bad values as warnings with exit status 0, so any output at all counts as a failure.
set -euo pipefail

root_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
units=(mcpmux.service mcpmux.socket mcpmux-admin.socket)
system_units=/usr/lib/systemd/system

command -v systemd-analyze >/dev/null || { echo "verify-systemd: systemd-analyze not found (apt-get install systemd)" >&2; exit 1; }
[[ -d "$system_units" ]] || { echo "verify-systemd: $system_units missing (apt-get install systemd)" >&2; exit 1; }

tree="$(mktemp -d)"
trap 'rm -rf "$tree"' EXIT
mkdir -p "$tree/etc/systemd/system" "$tree/usr/lib/systemd" "$tree/usr/local/bin" "$tree/bin"
cp -r "$system_units" "$tree/usr/lib/systemd/"
for u in "${units[@]}"; do cp "$root_dir/systemd/$u" "$tree/etc/systemd/system/"; done
# Stand-ins: verify only checks that these paths are executable files.
install -m 0755 /bin/true "$tree/usr/local/bin/mcpmux"
install -m 0755 /bin/true "$tree/bin/kill"

out="$(systemd-analyze verify --man=no --root="$tree" "${units[@]}" 2>&1)" || status=$?
if [[ -n "${status:-}" || -n "$out" ]]; then
    echo "verify-systemd: systemd-analyze verify rejected the units (status ${status:-0}):" >&2
    echo "$out" >&2
    exit 1
fi
echo "verify-systemd: ${units[*]} OK ($(systemd-analyze --version | sed -n 1p))"
