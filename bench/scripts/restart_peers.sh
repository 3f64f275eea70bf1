#!/usr/bin/env bash
# Restart under load, the peers: the same measurement as
# `lameduck-bench restart-load`, against
#   a. nginx, `nginx -s reload` every S seconds;
#   b. a naive SO_REUSEPORT hand-over (bench/peers/reuseport, Go net/http):
#      start a new instance on the same port, wait for its ready line, then
#      SIGTERM the old one (Server.Shutdown) and wait for it to exit.
# For each peer: `wrk -t2 -cC -dNs --latency` while it restarts, one markdown
# row with the columns of `lameduck-bench restart-load`.
#
#   bench/scripts/restart_peers.sh [--seconds N] [--every S] [--connections C]
#
# Markdown on stdout, progress on stderr. Every process it starts is stopped
# on exit; a watchdog ends the script if a run takes over N + 30 s.
set -euo pipefail

seconds=20
every=2
connections=64
usage() { echo "usage: $0 [--seconds N] [--every S] [--connections C]" >&2; exit 2; }
while [[ $# -gt 0 ]]; do
    case $1 in
        --seconds) seconds=${2:?}; shift 2 ;;
        --every) every=${2:?}; shift 2 ;;
        --connections) connections=${2:?}; shift 2 ;;
        -h | --help) usage ;;
        *) usage ;;
    esac
done
[[ $seconds =~ ^[0-9]+$ && $seconds -gt 0 ]] || usage
[[ $connections =~ ^[0-9]+$ && $connections -gt 0 ]] || usage
[[ $every =~ ^[0-9]+(\.[0-9]+)?$ ]] || usage

log() { echo "restart_peers: $*" >&2; }

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
target=${CARGO_TARGET_DIR:-$root/target}

# Tools: install the Debian package when one is missing.
need() {
    local tool=$1 pkg=$2
    command -v "$tool" >/dev/null 2>&1 && return 0
    PATH=$PATH:/usr/sbin:/sbin
    command -v "$tool" >/dev/null 2>&1 && return 0
    log "$tool not found: apt-get install -y $pkg"
    if ! apt-get install -y "$pkg" >&2; then
        apt-get update >&2 && apt-get install -y "$pkg" >&2
    fi
    command -v "$tool" >/dev/null 2>&1 || { log "$tool still missing"; exit 1; }
}
need wrk wrk
need nginx nginx
need go golang-go
need curl curl
need ss iproute2

tmp=$(mktemp -d "${TMPDIR:-/tmp}/restart-peers.XXXXXX")
declare -A live=()   # every process started here and not yet reaped
watchdog=

track() { live[$1]=1; }
stop_pid() { # pid: SIGTERM, up to 3 s, then SIGKILL; reap
    local p=$1 i
    unset "live[$p]"
    kill -0 "$p" 2>/dev/null || { wait "$p" 2>/dev/null || true; return 0; }
    kill -TERM "$p" 2>/dev/null || true
    for ((i = 0; i < 30; i++)); do
        kill -0 "$p" 2>/dev/null || break
        sleep 0.1
    done
    kill -KILL "$p" 2>/dev/null || true
    wait "$p" 2>/dev/null || true
}
cleanup() {
    local rc=$? p
    trap - EXIT INT TERM
    # nginx: a graceful quit first, if a master still runs.
    if [[ -s $tmp/nginx.pid ]] && kill -0 "$(cat "$tmp/nginx.pid")" 2>/dev/null; then
        timeout 5 nginx -p "$tmp" -c nginx.conf -e "$tmp/error.log" -s quit 2>/dev/null || true
    fi
    for p in "${!live[@]}"; do stop_pid "$p"; done
    if [[ -n $watchdog ]]; then stop_pid "$watchdog"; fi
    rm -rf "$tmp"
    exit "$rc"
}
trap cleanup EXIT
trap 'log "interrupted"; exit 130' INT
trap 'log "terminated"; exit 143' TERM

now_us() { echo "${EPOCHREALTIME/./}"; }
every_us=$(awk -v s="$every" 'BEGIN { printf "%d", s * 1000000 }')
((every_us >= 100000)) || { log "--every must be at least 0.1"; exit 2; }

# free_port: a listening port nobody holds (sets $port_out).
# shellcheck source=bench/scripts/ports.sh
source "$(dirname "${BASH_SOURCE[0]}")/ports.sh"

# Wait until GET / on port answers 200, at most 5 s.
wait_http() {
    local port=$1 i
    for ((i = 0; i < 50; i++)); do
        if [[ $(curl -s -o /dev/null -m 1 -w '%{http_code}' "http://127.0.0.1:$port/" || true) == 200 ]]; then
            return 0
        fi
        sleep 0.1
    done
    return 1
}

# One markdown row from wrk's output, parsed the way `run_wrk` does.
row() { # name restarts wrk-output-file
    local name=$1 restarts=$2 file=$3
    awk -v c="$connections" -v name="$name" -v r="$restarts" '
        { t = $0; sub(/^[ \t]+/, "", t) }
        t ~ /^Socket errors:/ {
            sub(/^Socket errors:/, "", t); n = split(t, parts, ",")
            for (i = 1; i <= n; i++) { split(parts[i], kv, " "); err[kv[1]] = kv[2] + 0 }
            next
        }
        t ~ /^Non-2xx or 3xx responses:/ { sub(/^Non-2xx or 3xx responses:/, "", t); non2xx = t + 0; next }
        t ~ /requests in/ { split(t, f, " "); requests = f[1] + 0; next }
        t ~ /^50%/ { split(t, f, " "); p50 = f[2]; next }
        t ~ /^99%/ { split(t, f, " "); p99 = f[2]; next }
        t ~ /^Latency/ && t !~ /Distribution/ { split(t, f, " "); max = f[4]; next }
        END {
            if (requests == 0) exit 1
            printf "| %s | %s | %s | %d | %d | %d | %d | %d | %d | %s | %s | %s |\n",
                c, name, r, requests, err["connect"], err["read"], err["write"], err["timeout"],
                non2xx, p50, p99, max
        }' "$file" || { log "could not read wrk's output:"; cat "$file" >&2; return 1; }
}

# Run wrk in the background; call restart_fn every S seconds (first at S/2)
# until wrk ends. Sets $restarts and $wrk_out.
run_with_restarts() { # port restart_fn
    local port=$1 restart_fn=$2 wrk_pid next
    wrk_out=$tmp/wrk.$port.out
    restarts=0
    timeout -k 2 $((seconds + 10)) wrk -t2 -c"$connections" -d"${seconds}s" --latency \
        "http://127.0.0.1:$port/" >"$wrk_out" 2>&1 &
    wrk_pid=$!
    track "$wrk_pid"
    next=$(($(now_us) + every_us / 2))
    while kill -0 "$wrk_pid" 2>/dev/null; do
        if (($(now_us) >= next)); then
            if "$restart_fn"; then
                restarts=$((restarts + 1))
            else
                log "restart failed"
            fi
            next=$((next + every_us))
        fi
        sleep 0.02
    done
    wait "$wrk_pid" || log "wrk exited with status $?"
    unset "live[$wrk_pid]"
}

# Watchdog: (N + 30 s) for each of the two runs, counted from here.
budget=$((2 * (seconds + 30)))
(
    sleep "$budget" &
    s=$!
    trap 'kill $s 2>/dev/null; wait $s; exit 0' TERM
    wait "$s"
    echo "restart_peers: over ${budget}s, stopping" >&2
    kill -TERM $$ 2>/dev/null
) &
watchdog=$!

# ---------- build the Go peer ----------
log "building bench/peers/reuseport"
rp_bin=$target/reuseport-peer
mkdir -p "$target"
(cd "$root/bench/peers/reuseport" && GOFLAGS=-mod=mod GOCACHE="$target/go-cache" go build -o "$rp_bin" .) >&2

echo "## Restart under load: peers"
echo
echo "\`wrk -t2 -c$connections -d${seconds}s --latency\`, a restart every $every s (first after $(awk -v s="$every" 'BEGIN { print s / 2 }') s). Failed requests by class as wrk counts them."
echo
echo "| connections | run | restarts | requests | connect | read | write | timeout | non-2xx | p50 | p99 | max |"
echo "|---|---|---|---|---|---|---|---|---|---|---|---|"

# ---------- a. nginx -s reload ----------
free_port; port=$port_out
mkdir -p "$tmp/client_body" "$tmp/proxy" "$tmp/fastcgi" "$tmp/uwsgi" "$tmp/scgi"
cat >"$tmp/nginx.conf" <<EOF
daemon off;
worker_processes 2;
pid $tmp/nginx.pid;
error_log $tmp/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    keepalive_timeout 65s;
    client_body_temp_path $tmp/client_body;
    proxy_temp_path $tmp/proxy;
    fastcgi_temp_path $tmp/fastcgi;
    uwsgi_temp_path $tmp/uwsgi;
    scgi_temp_path $tmp/scgi;
    server {
        listen 127.0.0.1:$port;
        location / { return 200 "hello\n"; }
    }
}
EOF
nginx_cmd=(nginx -p "$tmp" -c nginx.conf -e "$tmp/error.log")
"${nginx_cmd[@]}" -t >/dev/null 2>&1 || { "${nginx_cmd[@]}" -t >&2; exit 1; }
log "nginx on 127.0.0.1:$port"
"${nginx_cmd[@]}" </dev/null >&2 &
nginx_pid=$!
track "$nginx_pid"
wait_http "$port" || { log "nginx not ready"; exit 1; }
nginx_reload() { timeout 5 "${nginx_cmd[@]}" -s reload 2>>"$tmp/error.log"; }
run_with_restarts "$port" nginx_reload
row "nginx -s reload" "$restarts" "$wrk_out" || true
log "nginx: $restarts reloads; quitting"
timeout 5 "${nginx_cmd[@]}" -s quit 2>/dev/null || true
for ((i = 0; i < 100; i++)); do kill -0 "$nginx_pid" 2>/dev/null || break; sleep 0.1; done
stop_pid "$nginx_pid"
if grep -E '\[(alert|emerg|crit)\]' "$tmp/error.log" >&2; then log "nginx logged the above"; fi

# ---------- b. SO_REUSEPORT hand-over (Go) ----------
free_port; port=$port_out
gen=0
rp_pid=
# Start a new generation on $port; wait for its ready line (5 s at most).
rp_start() {
    local out i
    gen=$((gen + 1))
    out=$tmp/reuseport.$gen.log
    : >"$out"
    "$rp_bin" "127.0.0.1:$port" </dev/null >/dev/null 2>"$out" &
    local p=$!
    track "$p"
    for ((i = 0; i < 250; i++)); do
        if grep -q '^reuseport peer: ready, listening on http://' "$out"; then
            new_pid=$p
            return 0
        fi
        kill -0 "$p" 2>/dev/null || break
        sleep 0.02
    done
    log "reuseport generation $gen not ready:"; cat "$out" >&2
    stop_pid "$p"
    return 1
}
rp_restart() {
    local old=$rp_pid i
    rp_start || return 1
    rp_pid=$new_pid
    kill -TERM "$old" 2>/dev/null || true
    # Shutdown's own timeout is 10 s; give it 12.
    for ((i = 0; i < 600; i++)); do kill -0 "$old" 2>/dev/null || break; sleep 0.02; done
    stop_pid "$old"
}
log "reuseport peer on 127.0.0.1:$port"
rp_start || exit 1
rp_pid=$new_pid
run_with_restarts "$port" rp_restart
row "SO_REUSEPORT hand-over (Go)" "$restarts" "$wrk_out" || true
log "reuseport: $restarts hand-overs; stopping"
stop_pid "$rp_pid"
