#!/usr/bin/env bash
# Instructions per request of one peer, counted by callgrind: immune to the
# noise of a shared machine, unlike requests per second. The count covers
# the whole process (start-up and exit included), so use enough requests.
#
#   bench/scripts/instructions.sh target/release/lameduck-peer h1|h2 [REQUESTS]
#
# HTTP/1.1: h2load --h1 -c16; HTTP/2 (h2c): h2load -c16 -m16. Needs valgrind
# and h2load (nghttp2-client).
set -euo pipefail
cd "$(dirname "$0")/../.."
. bench/scripts/ports.sh

bin=$1 proto=$2 n=${3:-40000}
free_port
port=$port_out
out=$(mktemp) err=$(mktemp)
trap 'rm -f "$out" "$err"' EXIT
valgrind --tool=callgrind --callgrind-out-file="$out" "$bin" "127.0.0.1:$port" 2>"$err" &
peer=$!
for _ in $(seq 1 300); do grep -q ready "$err" && break; sleep 0.1; done
if [ "$proto" = h1 ]; then
    h2load --h1 -n "$n" -c 16 -t 1 "http://127.0.0.1:$port/" | grep -E '^requests:'
else
    h2load -n "$n" -c 16 -m 16 -t 1 "http://127.0.0.1:$port/" | grep -E '^requests:'
fi
kill -TERM "$peer"
wait "$peer" || true
total=$(sed -nE 's/.*Collected : ([0-9]+).*/\1/p' "$err")
echo "$bin $proto: $total instructions, $((total / n)) per request"
