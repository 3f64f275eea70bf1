#!/usr/bin/env bash
# Rolling restart behind a real load balancer: three `lameduck demo`
# instances behind HAProxy (roundrobin, `option httpchk GET /readyz`,
# `check inter 200ms fall 1 rise 2`, keep-alive to the backends with
# `http-reuse safe`, no retry-on/redispatch), `wrk -t2 -c64 -dNs --latency`
# through HAProxy while the instances are restarted one at a time: SIGTERM,
# wait for the exit, start it again on the same port, wait until HAProxy has
# it UP again (and at least 1 s), next instance; round and round until wrk
# ends. Two runs: `--drain-delay 0s` and `--drain-delay D` (default 2s).
#
#   bench/scripts/rolling_haproxy.sh [--seconds N] [--drain-delay D]
#
# Markdown on stdout, progress on stderr. Every process it starts is stopped
# on exit; a watchdog ends the script if a run takes over N + 30 s.
set -euo pipefail

seconds=30
drain=2s
usage() { echo "usage: $0 [--seconds N] [--drain-delay D]" >&2; exit 2; }
while [[ $# -gt 0 ]]; do
    case $1 in
        --seconds) seconds=${2:?}; shift 2 ;;
        --drain-delay) drain=${2:?}; shift 2 ;;
        -h | --help) usage ;;
        *) usage ;;
    esac
done
[[ $seconds =~ ^[0-9]+$ && $seconds -gt 0 ]] || usage
[[ $drain =~ ^[0-9]+(\.[0-9]+)?(ms|s)$ ]] || { echo "--drain-delay: like 2s or 500ms" >&2; exit 2; }
connections=64
runs=("0s")
[[ $drain == 0s || $drain == 0ms ]] || runs+=("$drain")

log() { echo "rolling_haproxy: $*" >&2; }

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
target=${CARGO_TARGET_DIR:-$root/target}
demo=$target/release/lameduck

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
need haproxy haproxy
need curl curl
need ss iproute2

if [[ ! -x $demo ]]; then
    command -v cargo >/dev/null 2>&1 || { log "cargo not found (needed to build $demo)"; exit 1; }
    log "building the demo: cargo build --release -p lameduck-cli"
    (cd "$root" && cargo build --release -p lameduck-cli) >&2
fi

tmp=$(mktemp -d "${TMPDIR:-/tmp}/rolling-haproxy.XXXXXX")
declare -A live=()   # every process started here and not yet reaped
watchdog=

track() { live[$1]=1; }
stop_pid() { # pid [seconds]: SIGTERM, wait, then SIGKILL; reap
    local p=$1 limit=${2:-3} i
    unset "live[$p]"
    kill -0 "$p" 2>/dev/null || { wait "$p" 2>/dev/null || true; return 0; }
    kill -TERM "$p" 2>/dev/null || true
    for ((i = 0; i < limit * 10; i++)); do
        kill -0 "$p" 2>/dev/null || break
        sleep 0.1
    done
    kill -KILL "$p" 2>/dev/null || true
    wait "$p" 2>/dev/null || true
}
cleanup() {
    local rc=$? p
    trap - EXIT INT TERM
    for p in "${!live[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    for p in "${!live[@]}"; do stop_pid "$p"; done
    if [[ -n $watchdog ]]; then stop_pid "$watchdog"; fi
    rm -rf "$tmp"
    exit "$rc"
}
trap cleanup EXIT
trap 'log "interrupted"; exit 130' INT
trap 'log "terminated"; exit 143' TERM

now_us() { echo "${EPOCHREALTIME/./}"; }

# free_port: a listening port nobody holds (sets $port_out).
# shellcheck source=bench/scripts/ports.sh
source "$(dirname "${BASH_SOURCE[0]}")/ports.sh"

# One markdown row from wrk's output, parsed the way `run_wrk` does.
row() { # drain restarts wrk-output-file
    awk -v d="$1" -v c="$connections" -v r="$2" '
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
            printf "| %s | %s | rolling, HAProxy | %s | %d | %d | %d | %d | %d | %d | %s | %s | %s |\n",
                d, c, r, requests, err["connect"], err["read"], err["write"], err["timeout"],
                non2xx, p50, p99, max
        }' "$3" || { log "could not read wrk's output:"; cat "$3" >&2; return 1; }
}

# Watchdog: (N + 30 s) for each run, counted from here (after any build).
budget=$((${#runs[@]} * (seconds + 30)))
(
    sleep "$budget" &
    s=$!
    trap 'kill $s 2>/dev/null; wait $s; exit 0' TERM
    wait "$s"
    echo "rolling_haproxy: over ${budget}s, stopping" >&2
    kill -TERM $$ 2>/dev/null
) &
watchdog=$!

gen=0
# Start instance i on its port; wait for its ready line (10 s at most).
start_instance() { # i drain
    local i=$1 d=$2 out p k
    gen=$((gen + 1))
    out=$tmp/demo.$i.$gen.log
    : >"$out"
    RUST_LOG=warn "$demo" demo --listen "127.0.0.1:${ports[i]}" --drain-delay "$d" --grace 10s \
        </dev/null >/dev/null 2>"$out" &
    p=$!
    track "$p"
    for ((k = 0; k < 500; k++)); do
        if grep -q 'ready, listening on http://' "$out"; then
            inst[i]=$p
            logs[i]=$out
            return 0
        fi
        kill -0 "$p" 2>/dev/null || break
        sleep 0.02
    done
    log "instance s$((i + 1)) not ready:"; cat "$out" >&2
    stop_pid "$p"
    return 1
}

# The status HAProxy gives server sI, from its CSV stats (UP, DOWN, ...).
server_status() { # i
    curl -s -m 1 "http://127.0.0.1:$stats_port/stats;csv" 2>/dev/null |
        awk -F, -v s="s$(($1 + 1))" '$1 == "be" && $2 == s { print $18 }' || true
}
wait_up() { # i seconds
    local k
    for ((k = 0; k < $2 * 20; k++)); do
        [[ $(server_status "$1") == UP* ]] && return 0
        sleep 0.05
    done
    return 1
}

echo "## Rolling restart behind HAProxy"
echo
echo "Three \`lameduck demo --grace 10s\` instances behind HAProxy $(haproxy -v | awk 'NR == 1 { print $3 }') (roundrobin, \`option httpchk GET /readyz\`, \`check inter 200ms fall 1 rise 2\`, \`http-reuse safe\`, no retry-on/redispatch: HAProxy's default \`retries 3\` on connection failure); \`wrk -t2 -c$connections -d${seconds}s --latency\` through HAProxy while the instances restart one at a time (SIGTERM, wait for the exit, start again, wait until HAProxy has it UP and at least 1 s, next). Failed requests by class as wrk counts them."
echo
echo "| drain delay | connections | run | restarts | requests | connect | read | write | timeout | non-2xx | p50 | p99 | max |"
echo "|---|---|---|---|---|---|---|---|---|---|---|---|---|"

for d in "${runs[@]}"; do
    ports=()
    for i in 0 1 2; do free_port; ports[i]=$port_out; done
    free_port; port=$port_out
    free_port; stats_port=$port_out
    inst=() logs=()
    for i in 0 1 2; do start_instance "$i" "$d" || exit 1; done
    cfg=$tmp/haproxy.$d.cfg
    cat >"$cfg" <<EOF
global
    maxconn 4096

defaults
    mode http
    timeout connect 1s
    timeout client 10s
    timeout server 10s
    option http-keep-alive
    http-reuse safe

listen stats
    bind 127.0.0.1:$stats_port
    stats enable
    stats uri /stats

frontend fe
    bind 127.0.0.1:$port
    default_backend be

backend be
    balance roundrobin
    option httpchk GET /readyz
    http-check expect status 200
    server s1 127.0.0.1:${ports[0]} check inter 200ms fall 1 rise 2
    server s2 127.0.0.1:${ports[1]} check inter 200ms fall 1 rise 2
    server s3 127.0.0.1:${ports[2]} check inter 200ms fall 1 rise 2
EOF
    haproxy -c -f "$cfg" >/dev/null 2>&1 || { haproxy -c -f "$cfg" >&2; exit 1; }
    haproxy -db -f "$cfg" </dev/null >"$tmp/haproxy.$d.log" 2>&1 &
    hap=$!
    track "$hap"
    for i in 0 1 2; do wait_up "$i" 5 || { log "s$((i + 1)) never UP"; cat "$tmp/haproxy.$d.log" >&2; exit 1; }; done
    log "drain delay $d: HAProxy on 127.0.0.1:$port, instances on ${ports[*]}"

    wrk_out=$tmp/wrk.$d.out
    timeout -k 2 $((seconds + 10)) wrk -t2 -c"$connections" -d"${seconds}s" --latency \
        "http://127.0.0.1:$port/" >"$wrk_out" 2>&1 &
    wrk_pid=$!
    track "$wrk_pid"
    restarts=0 bad_exits=0
    i=0
    sleep 1
    while kill -0 "$wrk_pid" 2>/dev/null; do
        old=${inst[i]}
        t0=$(now_us)
        kill -TERM "$old" 2>/dev/null || true
        # --grace 10s bounds the exit; give it 12 s.
        for ((k = 0; k < 600; k++)); do kill -0 "$old" 2>/dev/null || break; sleep 0.02; done
        unset "live[$old]"
        if kill -0 "$old" 2>/dev/null; then
            log "s$((i + 1)) did not exit in 12 s: SIGKILL"
            kill -KILL "$old" 2>/dev/null || true
        fi
        rc=0
        wait "$old" || rc=$?
        if ((rc != 0)); then
            bad_exits=$((bad_exits + 1))
            log "s$((i + 1)) exited with status $rc: $(tail -n 1 "${logs[i]}")"
        fi
        t1=$(now_us)
        start_instance "$i" "$d" || exit 1
        t2=$(now_us)
        wait_up "$i" 5 || log "s$((i + 1)) not UP in HAProxy after 5 s"
        while (($(now_us) - t2 < 1000000)); do sleep 0.02; done
        restarts=$((restarts + 1))
        log "restart $restarts: s$((i + 1)) exited in $(((t1 - t0) / 1000)) ms, UP again after $((($(now_us) - t1) / 1000)) ms"
        i=$(((i + 1) % 3))
    done
    rc=0
    wait "$wrk_pid" || rc=$?
    unset "live[$wrk_pid]"
    ((rc == 0)) || log "wrk exited with status $rc"
    row "$d" "$restarts" "$wrk_out" || true
    downs=$(grep -c 'is DOWN' "$tmp/haproxy.$d.log" || true)
    log "drain delay $d: $restarts restarts, $bad_exits non-zero exits, HAProxy logged $downs DOWN transitions"
    for p in "${inst[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    for p in "${inst[@]}"; do stop_pid "$p" 12; done
    stop_pid "$hap"
done
