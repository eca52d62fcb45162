#!/usr/bin/env bash
# cnm quickstart: build cnm, create a network, run two sandboxes on it that talk to each other,
# reach a published port from the host, then remove everything this script created.
#
# Run as root on a Linux machine with cargo (Debian/Ubuntu: missing build tools and python3 are
# installed):   sudo scripts/quickstart.sh
# Nothing is started by hand: the first `cnm` command starts cnmd in the background, and the
# script stops that daemon at the end (a cnmd that was already running is left alone).
#
# Settings (environment): QS_SUBNET (default 10.89.0.0/24), QS_PORT (host port, default 18080),
# CNM_BIN_DIR (use cnm/cnmd from this directory instead of building them).
set -euo pipefail

SUBNET=${QS_SUBNET:-10.89.0.0/24}
PORT=${QS_PORT:-18080}
PREFIX=${SUBNET%.*/*}          # 10.89.0
SRV_IP=$PREFIX.10
NET=quickstart-$$
SRV=qs-server-$$
CLI=qs-client-$$

say() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }
run() { printf '$ %s\n' "$*"; "$@"; }

[ "$(id -u)" = 0 ] || { echo "quickstart: run as root (cnm creates namespaces, bridges and nftables rules)" >&2; exit 1; }
cd "$(dirname "$0")/.."

if [ -n "${CNM_BIN_DIR:-}" ]; then
    BIN=$CNM_BIN_DIR
    command -v python3 >/dev/null || { echo "quickstart: the demo server needs python3 (apt-get install python3-minimal)" >&2; exit 1; }
else
    # On a fresh machine: what the build needs (a C toolchain; protoc for cnmd's etcd client) and
    # the demo server's python3.
    scripts/build-deps.sh python3-minimal:python3
    say "Building cnm and cnmd"
    run cargo build --release -p cnm-cli -p cnm-daemon
    BIN=${CARGO_TARGET_DIR:-$PWD/target}/release
fi
cnm() { printf '$ cnm %s\n' "$*"; "$BIN/cnm" "$@"; }

DAEMON_PID= SRV_PID= CREATED_NET= CREATED_SRV=
cleanup() {
    status=$?
    set +e
    say "Cleaning up"
    if [ -n "$SRV_PID" ]; then kill "$SRV_PID" 2>/dev/null; wait "$SRV_PID" 2>/dev/null; fi
    [ -n "$CREATED_SRV" ] && cnm sandbox rm "$SRV"
    [ -n "$CREATED_NET" ] && cnm network rm "$NET"
    if [ -n "$DAEMON_PID" ]; then
        echo "stopping the cnmd this script started (pid $DAEMON_PID)"
        kill "$DAEMON_PID"
        for _ in $(seq 100); do kill -0 "$DAEMON_PID" 2>/dev/null || break; sleep 0.1; done
    fi
    exit "$status"
}
trap cleanup EXIT

say "Creating network $NET ($SUBNET); cnm starts cnmd if it is not running"
errlog=$(mktemp)
printf '$ cnm network create --subnet %s %s\n' "$SUBNET" "$NET"
if ! "$BIN/cnm" network create --subnet "$SUBNET" "$NET" 2>"$errlog"; then
    cat "$errlog" >&2; rm -f "$errlog"; exit 1
fi
cat "$errlog" >&2
DAEMON_PID=$(sed -n 's/^started cnmd (pid \([0-9]*\)).*/\1/p' "$errlog")
rm -f "$errlog"
CREATED_NET=1
cnm network ls

say "Starting a web server in sandbox $SRV at $SRV_IP, port 8000 published on host port $PORT"
printf '$ cnm run --keep --name %s --network %s --ip %s -p %s:8000 -- python3 -m http.server 8000 &\n' \
    "$SRV" "$NET" "$SRV_IP" "$PORT"
"$BIN/cnm" run --keep --name "$SRV" --network "$NET" --ip "$SRV_IP" -p "$PORT:8000" \
    -- python3 -m http.server 8000 >/dev/null 2>&1 &
SRV_PID=$!
CREATED_SRV=1

# Wait until it answers (bounded, with backoff), from the host over the bridge.
delay=0.05
for _ in $(seq 40); do
    if (exec 3<>"/dev/tcp/$SRV_IP/8000") 2>/dev/null; then break; fi
    kill -0 "$SRV_PID" 2>/dev/null || { echo "the server sandbox exited early" >&2; exit 1; }
    sleep "$delay"; delay=$(awk "BEGIN { d = $delay * 2; print (d > 1 ? 1 : d) }")
done
cnm sandbox ls

say "A second sandbox fetches the page from $SRV_IP:8000 (pure bash, /dev/tcp)"
cnm run --name "$CLI" --network "$NET" -- bash -c \
    "exec 3<>/dev/tcp/$SRV_IP/8000; printf 'GET / HTTP/1.0\r\n\r\n' >&3; head -n 1 <&3; echo \"(from \$(hostname), whose /etc/hosts says:)\"; grep -v '^ff\|^fe\|^::' /etc/hosts"

say "The host reaches the published port 127.0.0.1:$PORT"
if command -v curl >/dev/null; then
    run curl -sS -o /dev/null -w 'HTTP %{http_code} from 127.0.0.1:'"$PORT"'\n' "http://127.0.0.1:$PORT/"
else
    exec 3<>"/dev/tcp/127.0.0.1/$PORT"; printf 'GET / HTTP/1.0\r\n\r\n' >&3; head -n 1 <&3; exec 3<&-
fi

say "Done: the cleanup below removes the sandbox, the network and the daemon it started"
