#!/usr/bin/env bash
# Acceptance test of the Debian package on this machine (issue 14): installs DEB with dpkg -i,
# checks its files, conffiles, user, session key, man page and units (systemd-analyze verify),
# runs `mcpmux check` on the shipped examples and the installed binary on ephemeral ports
# with the demo example, then purges the package and checks that only what Debian policy
# keeps (the mcpmux system user) is left. Usage: scripts/test-deb.sh target/debian/mcpmux.deb
#
# It refuses to run where it could clobber anything of a developer's: an installed mcpmux
# package, or an existing /etc/mcpmux, /var/lib/mcpmux or /usr/bin/mcpmux. The purge always
# runs (EXIT trap) once this script has installed the package.
set -euo pipefail

deb="$(realpath "${1:?usage: test-deb.sh DEB}")"
[[ "$(id -u)" == 0 ]] || { echo "test-deb: must run as root (dpkg -i)" >&2; exit 1; }
for cmd in dpkg dpkg-query systemd-analyze curl man; do
    command -v "$cmd" >/dev/null || { echo "test-deb: $cmd not found" >&2; exit 1; }
done
if [[ "$(dpkg-query -W -f='${db:Status-Abbrev}' mcpmux 2>/dev/null || true)" == [ih]* ]]; then
    echo "test-deb: the mcpmux package is installed here already; not touching it" >&2; exit 1
fi
for path in /etc/mcpmux /var/lib/mcpmux /usr/bin/mcpmux /usr/bin/mcp-echo; do
    [[ ! -e "$path" ]] || { echo "test-deb: $path exists; not clobbering it" >&2; exit 1; }
done

scratch="$(mktemp -d)"
installed=0
daemon_pid=""
cleanup() {
    local status=$?
    [[ -z "$daemon_pid" ]] || kill -KILL "$daemon_pid" 2>/dev/null || true
    if ((installed)); then
        dpkg --purge mcpmux >/dev/null 2>&1 || { echo "test-deb: purge failed" >&2; status=1; }
    fi
    rm -rf "$scratch"
    exit "$status"
}
trap cleanup EXIT
fail() { echo "test-deb: FAIL: $*" >&2; exit 1; }
pass() { echo "test-deb: ok: $*"; }

# --- install -------------------------------------------------------------------------------
installed=1
dpkg -i "$deb" >"$scratch/dpkg.log" 2>&1 || { cat "$scratch/dpkg.log" >&2; fail "dpkg -i"; }
pass "dpkg -i $(basename "$deb")"

dpkg -L mcpmux | sort > "$scratch/files"
for f in /usr/bin/mcpmux /usr/bin/mcp-echo \
    /usr/lib/systemd/system/mcpmux.service /usr/lib/systemd/system/mcpmux.socket \
    /usr/lib/systemd/system/mcpmux-admin.socket /usr/lib/sysusers.d/mcpmux.conf \
    /etc/mcpmux/mcpmux.env /usr/share/man/man1/mcpmux.1.gz \
    /usr/share/bash-completion/completions/mcpmux /usr/share/zsh/vendor-completions/_mcpmux \
    /usr/share/fish/vendor_completions.d/mcpmux.fish \
    /usr/share/doc/mcpmux/examples/demo.json /usr/share/doc/mcpmux/examples/everything.json \
    /usr/share/doc/mcpmux/examples/prometheus/mcpmux-rules.yml \
    /usr/share/doc/mcpmux/examples/grafana/mcpmux.json /usr/share/doc/mcpmux/copyright; do
    grep -qxF "$f" "$scratch/files" || fail "$f is not in the package"
    [[ -f "$f" ]] || fail "$f is not installed"
done
pass "files in place ($(wc -l < "$scratch/files") paths)"

conffiles="$(dpkg-query --control-show mcpmux conffiles)"
[[ "$conffiles" == "/etc/mcpmux/mcpmux.env" ]] || fail "conffiles: '$conffiles'"
pass "conffiles: $conffiles"

getent passwd mcpmux >/dev/null || fail "no mcpmux user (sysusers.d)"
[[ "$(getent passwd mcpmux | cut -d: -f6)" == /var/lib/mcpmux ]] || fail "mcpmux's home"
[[ -d /etc/mcpmux/clients && -z "$(ls -A /etc/mcpmux/clients)" ]] || fail "/etc/mcpmux/clients is not an empty directory"
key=/etc/mcpmux/session.key
[[ "$(stat -c '%a %U %G' "$key")" == "600 mcpmux mcpmux" ]] || fail "session key: $(stat -c '%a %U %G' "$key")"
grep -Eqx '[0-9a-f]{64}' "$key" || fail "session key is not 64 hex characters"
pass "user mcpmux, empty clients directory, session key 0600 mcpmux"

for example in /usr/share/doc/mcpmux/examples/*.json; do
    grep -q '"description"' "$example" || fail "$example has no description"
done
/usr/bin/mcpmux check /usr/share/doc/mcpmux/examples > "$scratch/check.out" \
    || fail "mcpmux check on the examples: $(cat "$scratch/check.out")"
pass "mcpmux check on the examples: $(head -1 "$scratch/check.out")"

MANWIDTH=100 man --warnings -P cat -l /usr/share/man/man1/mcpmux.1.gz > "$scratch/man.txt" 2> "$scratch/man.err"
[[ ! -s "$scratch/man.err" ]] || fail "man warnings: $(cat "$scratch/man.err")"
grep -q -- '--max-children' "$scratch/man.txt" || fail "the installed man page lacks --max-children"
pass "man -l renders mcpmux.1.gz"

verify_out="$(systemd-analyze verify --man=no mcpmux.service mcpmux.socket mcpmux-admin.socket 2>&1)" \
    || fail "systemd-analyze verify: $verify_out"
[[ -z "$verify_out" ]] || fail "systemd-analyze verify complained: $verify_out"
grep -q '^ExecStart=/usr/bin/mcpmux serve --clients /etc/mcpmux/clients' /usr/lib/systemd/system/mcpmux.service \
    || fail "the installed unit does not run /usr/bin/mcpmux"
pass "systemd-analyze verify on the installed units"

# --- the installed binary, briefly ---------------------------------------------------------
mkdir "$scratch/clients"
cp /usr/share/doc/mcpmux/examples/demo.json "$scratch/clients/"
/usr/bin/mcpmux serve --listen 127.0.0.1:0 --admin-listen 127.0.0.1:0 \
    --clients "$scratch/clients" --allow-open-tenants 2> "$scratch/daemon.log" &
daemon_pid=$!
addr=""
for _ in $(seq 100); do
    addr="$(grep -o 'listening on http://[0-9.:]*/mcp' "$scratch/daemon.log" | sed -n 1p | sed 's|listening on http://||; s|/mcp||')" || true
    [[ -z "$addr" ]] || break
    kill -0 "$daemon_pid" 2>/dev/null || fail "the daemon exited: $(cat "$scratch/daemon.log")"
    sleep 0.1
done
[[ -n "$addr" ]] || fail "the daemon did not listen within 10 s: $(cat "$scratch/daemon.log")"
mcp() {
    curl -sS --max-time 10 "http://$addr/mcp" -H 'X-Client-ID: demo' \
        -H 'Accept: application/json, text/event-stream' -H 'Content-Type: application/json' "$@"
}
init='{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"test-deb","version":"1"}}}'
session="$(mcp -D - -o "$scratch/init.json" -d "$init" | tr -d '\r' | sed -n 's/^mcp-session-id: //Ip')"
[[ -n "$session" ]] || fail "initialize: no session: $(cat "$scratch/init.json")"
grep -q '"serverInfo"' "$scratch/init.json" || fail "initialize: $(cat "$scratch/init.json")"
mcp -H "Mcp-Session-Id: $session" -d '{"jsonrpc":"2.0","method":"notifications/initialized"}' >/dev/null
answer="$(mcp -H "Mcp-Session-Id: $session" -d '{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"echo","arguments":{"message":"from-the-package"}}}')"
grep -q 'from-the-package' <<<"$answer" || fail "tools/call echo: $answer"
kill -TERM "$daemon_pid"
wait "$daemon_pid" || fail "the daemon's exit status after SIGTERM was $?"
daemon_pid=""
pass "installed mcpmux served the demo example on $addr and stopped cleanly"

# --- purge ---------------------------------------------------------------------------------
dpkg --purge mcpmux > "$scratch/purge.log" 2>&1 || { cat "$scratch/purge.log" >&2; fail "dpkg --purge"; }
installed=0
dpkg-query -W mcpmux >/dev/null 2>&1 && [[ "$(dpkg-query -W -f='${db:Status-Abbrev}' mcpmux)" != "un " ]] \
    && fail "dpkg still knows mcpmux: $(dpkg-query -W -f='${db:Status-Abbrev}' mcpmux)"
while read -r f; do
    [[ -d "$f" ]] && continue # shared directories (/usr/bin, /usr/share/man/man1, ...)
    [[ ! -e "$f" ]] || fail "$f left after purge"
done < "$scratch/files"
for path in /etc/mcpmux /var/lib/mcpmux /usr/share/doc/mcpmux; do
    [[ ! -e "$path" ]] || fail "$path left after purge"
done
getent passwd mcpmux >/dev/null || fail "the mcpmux user went too (policy keeps it)"
pass "purged: no file left; the mcpmux system user stays (Debian policy)"
