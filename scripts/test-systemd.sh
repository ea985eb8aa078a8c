#!/usr/bin/env bash
# Acceptance test of the package under a real systemd (issue 14). Usage:
#   scripts/test-systemd.sh target/debian/mcpmux.deb
#
# systemd boots as PID 1 of a container (systemd-nspawn, Debian's systemd-container) whose
# root is an overlayfs over this machine's root with a tmpfs upper layer, built inside a
# private mount namespace: whatever the container writes (dpkg -i, /etc/mcpmux, its boot-time
# `systemd-tmpfiles --remove` of /tmp) lands in the tmpfs and vanishes with it. A bare
# `unshare` would share the host's file system, and that tmpfiles pass empties the host's
# /tmp. The test checks that a marker in the host's /tmp survives. The container has its own
# network namespace (loopback only), so its ports cannot collide with anything here.
#
# In the container, with the package installed: the service does not start without a tenant;
# with the demo example, `systemctl start` returns once READY=1 came (Type=notify) and the
# demo tenant answers at once; `systemctl reload` goes through reloading and back with the
# same main process; a SIGSTOPped daemon misses its watchdog and is killed and restarted;
# mcpmux.socket starts the service on the first request and answers it; `systemctl stop`
# with 20 calls in flight completes them all and leaves no process of the unit; the mcpmux
# user comes from sysusers.d and /var/lib/mcpmux from StateDirectory=. A test drop-in gives
# the unit short timeouts (watchdog 2 s) so the whole run takes about a minute.
set -euo pipefail

deb="$(realpath "${1:?usage: test-systemd.sh DEB}")"
[[ "$(id -u)" == 0 ]] || { echo "test-systemd: must run as root" >&2; exit 1; }
for cmd in systemd-nspawn unshare nsenter curl; do
    command -v "$cmd" >/dev/null || { echo "test-systemd: $cmd not found (apt-get install systemd-container)" >&2; exit 1; }
done

scratch="$(mktemp -d)"
marker_dir="$(mktemp -d)"   # in the host's /tmp (or $TMPDIR): must survive the boot
touch "$marker_dir/keep"
machine="mcpmux-test-$$"
nspawn_pid=""
leader=""
fail() { echo "test-systemd: FAIL: $*" >&2; exit 1; }
pass() { echo "test-systemd: ok: $*"; }

cleanup() {
    local status=$?
    if [[ -n "$leader" ]] && kill -0 "$leader" 2>/dev/null; then
        ct journalctl --no-pager -n 60 -u mcpmux.service -u mcpmux.socket > "$scratch/journal" 2>&1 || true
        ((status == 0)) || { echo "--- the container's journal (mcpmux):"; cat "$scratch/journal"; } >&2
        kill -s RTMIN+4 "$leader" 2>/dev/null || true   # systemd: poweroff
    fi
    if [[ -n "$nspawn_pid" ]]; then
        for _ in $(seq 300); do kill -0 "$nspawn_pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$nspawn_pid" 2>/dev/null || true
        wait "$nspawn_pid" 2>/dev/null || true
    fi
    if [[ ! -e "$marker_dir/keep" ]]; then
        echo "test-systemd: FAIL: the host's $marker_dir/keep is gone: the container touched the host's /tmp" >&2
        status=1
    fi
    rm -rf "$marker_dir"
    # The overlay and its tmpfs lived only in the private mount namespace: the mount point
    # is an empty directory again.
    if findmnt "$scratch/root" >/dev/null 2>&1; then
        echo "test-systemd: $scratch/root is still mounted; leaving $scratch" >&2
    else
        rm -rf "$scratch"
    fi
    exit "$status"
}
trap cleanup EXIT
trap 'exit 143' TERM INT   # so a timeout still powers the container off

# Runs a command in the container: all its namespaces, its root, as root.
ct() { nsenter --target "$leader" --all --root --wd=/ -- "$@"; }
# `systemctl show -p PROP --value UNIT`
prop() { ct systemctl show -p "$1" --value "$2"; }
# wait_for SECONDS DESCRIPTION COMMAND...: polls COMMAND every 0.1 s until it succeeds.
wait_for() {
    local limit=$1 what=$2
    shift 2
    local deadline=$((SECONDS + limit))
    until "$@" >/dev/null 2>&1; do
        ((SECONDS < deadline)) || fail "$what: not within ${limit}s"
        sleep 0.1
    done
}

# --- boot ----------------------------------------------------------------------------------
mkdir -p "$scratch/mnt" "$scratch/pkg"
cp "$deb" "$scratch/pkg/mcpmux.deb"
# The container's init gets basic.target (plus what the test starts): the host's enabled
# services (prometheus, ssh, ...) stay down.
unshare --mount --propagation private -- bash -c '
    set -e
    scratch=$1 machine=$2
    # nspawn keeps state under /run; a private tmpfs there keeps it off the host.
    mount -t tmpfs tmpfs /run
    mount -t tmpfs -o size=2g,mode=0755 tmpfs "$scratch/mnt"
    mkdir "$scratch/mnt/upper" "$scratch/mnt/work" "$scratch/mnt/root"
    mount -t overlay overlay -o "lowerdir=/,upperdir=$scratch/mnt/upper,workdir=$scratch/mnt/work" "$scratch/mnt/root"
    exec systemd-nspawn --quiet --directory="$scratch/mnt/root" --machine="$machine" \
        --uuid="$(cat /proc/sys/kernel/random/uuid | tr -d -)" \
        --private-network --register=no --keep-unit --console=read-only \
        --bind-ro="$scratch/pkg:/mnt/mcpmux-pkg" \
        --boot -- systemd.unit=basic.target
' _ "$scratch" "$machine" > "$scratch/console.log" 2>&1 &
nspawn_pid=$!

find_leader() {
    local p
    for p in $(pgrep -P "$(pgrep -P "$nspawn_pid" -x systemd-nspawn || echo "$nspawn_pid")"); do
        if [[ "$(cat "/proc/$p/comm" 2>/dev/null)" == systemd ]]; then leader=$p; return 0; fi
    done
    return 1
}
deadline=$((SECONDS + 60))
until find_leader; do
    kill -0 "$nspawn_pid" 2>/dev/null || fail "systemd-nspawn exited: $(cat "$scratch/console.log")"
    ((SECONDS < deadline)) || fail "no systemd in the container within 60 s"
    sleep 0.2
done
# Until its manager's bus is up, systemctl in the container cannot even ask.
booted() {
    state="$(timeout 10 nsenter --target "$leader" --all --root --wd=/ -- systemctl is-system-running --wait 2>/dev/null || true)"
    [[ "$state" == running || "$state" == degraded ]]
}
wait_for 90 "the container's systemd to finish booting (last state: '${state:-}')" booted
pass "systemd $(ct systemctl --version | sed -n 1p | cut -d' ' -f2) booted as PID 1 of the container ($state)"

# --- install -------------------------------------------------------------------------------
ct dpkg -i /mnt/mcpmux-pkg/mcpmux.deb > "$scratch/dpkg.log" 2>&1 || { cat "$scratch/dpkg.log" >&2; fail "dpkg -i in the container"; }
ct getent passwd mcpmux > /dev/null || fail "no mcpmux user after install"
ct test ! -e /var/lib/mcpmux || fail "/var/lib/mcpmux exists before the first start"
[[ "$(prop ActiveState mcpmux.service)" == inactive ]] || fail "installing started the service"
[[ "$(prop UnitFileState mcpmux.service)" == disabled ]] || fail "UnitFileState $(prop UnitFileState mcpmux.service)"
pass "installed: the mcpmux user from sysusers.d; nothing started"

# Short timeouts for the test, and open tenants (the demo example has no token).
ct mkdir -p /etc/systemd/system/mcpmux.service.d
ct tee /etc/systemd/system/mcpmux.service.d/test.conf > /dev/null <<'UNIT'
[Service]
Environment=MCPMUX_ALLOW_OPEN_TENANTS=true
WatchdogSec=2s
TimeoutAbortSec=3s
RestartSec=200ms
TimeoutStopSec=40s
UNIT
ct systemctl daemon-reload

# --- no tenant, no start -------------------------------------------------------------------
ct systemctl start mcpmux.service
[[ "$(prop ActiveState mcpmux.service)" == inactive ]] || fail "the service started with no tenant"
[[ "$(prop ConditionResult mcpmux.service)" == no ]] || fail "ConditionResult $(prop ConditionResult mcpmux.service)"
pass "no tenant: systemctl start skips the service (ConditionDirectoryNotEmpty)"

# --- start (Type=notify) -------------------------------------------------------------------
ct cp /usr/share/doc/mcpmux/examples/demo.json /etc/mcpmux/clients/demo.json
timeout 60 nsenter --target "$leader" --all --root --wd=/ -- systemctl start mcpmux.service \
    || fail "systemctl start mcpmux"
[[ "$(prop ActiveState mcpmux.service)" == active ]] || fail "not active after start"
[[ "$(prop Type mcpmux.service)" == notify ]] || fail "Type=$(prop Type mcpmux.service)"

mcp() { # mcp ARGS...: a POST to the container's tenant port for the demo tenant
    ct curl -sS --max-time 20 http://127.0.0.1:8080/mcp -H 'X-Client-ID: demo' \
        -H 'Accept: application/json, text/event-stream' -H 'Content-Type: application/json' "$@"
}
init='{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"test-systemd","version":"1"}}}'
call() { # call ID TOOL ARGS_JSON: tools/call in $session; prints the answer
    mcp -H "Mcp-Session-Id: $session" -d "{\"jsonrpc\":\"2.0\",\"id\":$1,\"method\":\"tools/call\",\"params\":{\"name\":\"$2\",\"arguments\":$3}}"
}
open_session() {
    session="$(mcp -D - -o /dev/null -d "$init" | tr -d '\r' | sed -n 's/^mcp-session-id: //Ip')"
    [[ -n "$session" ]] || return 1
    mcp -H "Mcp-Session-Id: $session" -d '{"jsonrpc":"2.0","method":"notifications/initialized"}' > /dev/null
}
# No retry: active means READY=1 came after both listeners were bound.
open_session || fail "initialize right after systemctl start returned"
answer="$(call 2 echo '{"message":"under-systemd"}')"
grep -q under-systemd <<<"$answer" || fail "demo echo: $answer"
main_pid="$(prop MainPID mcpmux.service)"
[[ "$(ct ps -o user= -p "$main_pid" | tr -d ' ')" == mcpmux ]] || fail "the daemon does not run as mcpmux"
[[ "$(ct stat -c '%U %a' /var/lib/mcpmux)" == "mcpmux 750" ]] || fail "state directory: $(ct stat -c '%U %a' /var/lib/mcpmux)"
pass "start: active after READY (Type=notify), demo answers at once, runs as mcpmux, StateDirectory /var/lib/mcpmux (mcpmux 750)"

# --- reload --------------------------------------------------------------------------------
ct cp /usr/share/doc/mcpmux/examples/demo.json /etc/mcpmux/clients/second.json
since="$(ct date '+%Y-%m-%d %H:%M:%S')"
timeout 30 nsenter --target "$leader" --all --root --wd=/ -- systemctl reload mcpmux.service || fail "systemctl reload"
[[ "$(prop ActiveState mcpmux.service)" == active ]] || fail "not active after reload"
[[ "$(prop MainPID mcpmux.service)" == "$main_pid" ]] || fail "reload replaced the main process"
ct journalctl --no-pager -o cat -u mcpmux.service --since "$since" > "$scratch/reload.log"
grep -q '^Reloading' "$scratch/reload.log" && grep -q '^Reloaded' "$scratch/reload.log" \
    || fail "no Reloading/Reloaded in the journal: $(cat "$scratch/reload.log")"
second="$(ct curl -sS --max-time 20 http://127.0.0.1:8080/mcp -H 'X-Client-ID: second' \
    -H 'Accept: application/json, text/event-stream' -H 'Content-Type: application/json' -d "$init")"
grep -q serverInfo <<<"$second" || fail "the tenant added before the reload: $second"
pass "reload: reloading and back to active, same main process, the new tenant answers"

# --- watchdog ------------------------------------------------------------------------------
restarts="$(prop NRestarts mcpmux.service)"
ct kill -STOP "$main_pid"
new_pid_running() {
    local pid
    pid="$(prop MainPID mcpmux.service)"
    [[ "$pid" != 0 && "$pid" != "$main_pid" && "$(prop ActiveState mcpmux.service)" == active ]]
}
wait_for 30 "restart after a missed watchdog" new_pid_running
# Read whole, then searched: `journalctl | grep -q` would fail under pipefail on SIGPIPE.
journal="$(ct journalctl --no-pager -o cat -u mcpmux.service)"
grep -q 'Watchdog timeout' <<<"$journal" || fail "no watchdog timeout in the journal"
(($(prop NRestarts mcpmux.service) > restarts)) || fail "NRestarts did not grow"
ct test ! -e "/proc/$main_pid" || fail "the stopped daemon $main_pid is still there"
open_session || fail "initialize after the watchdog restart"
pass "watchdog: the SIGSTOPped daemon was killed and restarted (NRestarts $(prop NRestarts mcpmux.service))"

# --- socket activation ---------------------------------------------------------------------
ct systemctl stop mcpmux.service
ct systemctl start mcpmux.socket
[[ "$(prop ActiveState mcpmux.socket)" == active ]] || fail "mcpmux.socket is not listening"
[[ "$(prop ActiveState mcpmux.service)" == inactive ]] || fail "the service runs before any request"
open_session || fail "the first request through mcpmux.socket"
answer="$(call 3 echo '{"message":"socket-activated"}')"
grep -q socket-activated <<<"$answer" || fail "echo through the socket: $answer"
[[ "$(prop ActiveState mcpmux.service)" == active ]] || fail "the service is not active after the first request"
journal="$(ct journalctl --no-pager -o cat -u mcpmux.service -n 200)"
grep -q 'listening on http://127.0.0.1:8080/mcp' <<<"$journal" \
    || fail "the daemon did not log serving the socket's address"
pass "socket activation: mcpmux.socket started the service and it answered the first request"

# --- stop with 20 calls in flight ----------------------------------------------------------
callers=()
for i in $(seq 1 20); do
    (call "$((100 + i))" slow '{"ms":4000}' > "$scratch/slow.$i" 2>&1 || echo "curl status $?" >> "$scratch/slow.$i") &
    callers+=($!)
done
inflight() {
    local status
    status="$(ct curl -sS --max-time 5 http://127.0.0.1:8081/status)"
    grep -q '"inflight":20' <<<"$status"
}
wait_for 20 "20 calls in flight" inflight
cgroup="$(prop ControlGroup mcpmux.service)"
timeout 60 nsenter --target "$leader" --all --root --wd=/ -- systemctl stop mcpmux.service mcpmux.socket \
    || fail "systemctl stop"
wait "${callers[@]}"
for i in $(seq 1 20); do
    grep -q 'done after 4000 ms' "$scratch/slow.$i" || fail "in-flight call $i: $(cat "$scratch/slow.$i")"
done
[[ "$(prop ActiveState mcpmux.service)" == inactive ]] || fail "not inactive after stop"
left="$(ct pgrep -u mcpmux || true)"
[[ -z "$left" ]] || fail "processes of mcpmux left: $left"
for hierarchy in unified systemd; do
    procs="/sys/fs/cgroup/$hierarchy$cgroup/cgroup.procs"
    if ct test -e "$procs"; then
        [[ -z "$(ct cat "$procs")" ]] || fail "processes left in $procs"
    fi
done
[[ "$(prop Result mcpmux.service)" == success ]] || fail "Result=$(prop Result mcpmux.service)"
pass "stop: 20 in-flight calls completed, no process of the unit left ($cgroup), Result=success"
