#!/usr/bin/env bash
# Interop tier: drive the demo with real third-party clients (curl for
# HTTP/1.1 and HTTP/2 prior knowledge, h2load from nghttp2) through a
# SIGTERM. Needs curl and h2load (Debian: apt-get install curl nghttp2-client).
# Bounded: every client has a timeout; the whole script takes ~10 s.
set -euo pipefail
cd "$(dirname "$0")/.."

for tool in curl h2load; do
  command -v "$tool" >/dev/null || { echo "interop: $tool not found (apt-get install curl nghttp2-client)" >&2; exit 1; }
done

cargo build -q -p lameduck-cli
bin=target/debug/lameduck
work=$(mktemp -d)
pid=
cleanup() { [ -n "$pid" ] && kill -9 "$pid" 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT

passed=0 failed=0
check() { # name, command...
  local name=$1; shift
  if "$@"; then passed=$((passed+1)); echo "ok   $name"; else failed=$((failed+1)); echo "FAIL $name"; fi
}

start_demo() {
  NO_COLOR=1 "$bin" demo --listen 127.0.0.1:0 "$@" 2>"$work/demo.err" &
  pid=$!
  for _ in $(seq 1 200); do
    addr=$(grep -o 'http://[0-9.:]*' "$work/demo.err" | head -1 || true)
    [ -n "$addr" ] && return 0
    sleep 0.05
  done
  echo "interop: demo did not start" >&2; cat "$work/demo.err" >&2; exit 1
}

wait_exit() { # -> sets code
  local i
  for i in $(seq 1 200); do
    if ! kill -0 "$pid" 2>/dev/null; then break; fi
    sleep 0.05
  done
  set +e; wait "$pid"; code=$?; set -e
  pid=
}

start_demo

# Plain requests with both protocols.
check "curl http/1.1 GET /" bash -c "curl -sS -m 5 --http1.1 '$addr/' | grep -q 'hello from lameduck'"
check "curl h2c prior knowledge GET /" bash -c "curl -sS -m 5 --http2-prior-knowledge -o /dev/null -w '%{http_version} %{http_code}' '$addr/' | grep -qx '2 200'"
check "h2load 2000 requests, 0 failed" bash -c "h2load -n 2000 -c 10 -m 10 '$addr/' > '$work/h2load1.txt' 2>&1; grep -q 'requests: 2000 total, 2000 started, 2000 done, 2000 succeeded, 0 failed, 0 errored' '$work/h2load1.txt'"

# Through a SIGTERM: requests in flight on HTTP/1.1 and HTTP/2 complete.
curl -sS -m 10 --http1.1 -D "$work/h1.head" -o "$work/h1.body" "$addr/slow?ms=1200" &
c1=$!
curl -sS -m 10 --http2-prior-knowledge -o "$work/h2.body" -w '%{http_version} %{http_code}' "$addr/slow?ms=1200" >"$work/h2.status" &
c2=$!
h2load -n 40 -c 4 -m 10 "$addr/slow?ms=900" >"$work/h2load2.txt" 2>&1 &
c3=$!
sleep 0.4
kill -TERM "$pid"
set +e; wait $c1; r1=$?; wait $c2; r2=$?; wait $c3; set -e
wait_exit

check "curl http/1.1 in flight at SIGTERM gets 200 + Connection: close" bash -c "[ $r1 = 0 ] && grep -q '^HTTP/1.1 200' '$work/h1.head' && grep -qi '^connection: close' '$work/h1.head' && grep -q 'slept 1200 ms' '$work/h1.body'"
check "curl h2c in flight at SIGTERM gets 200" bash -c "[ $r2 = 0 ] && grep -qx '2 200' '$work/h2.status' && grep -q 'slept 1200 ms' '$work/h2.body'"
check "h2load streams in flight at SIGTERM all succeed" grep -q 'requests: 40 total, 40 started, 40 done, 40 succeeded, 0 failed, 0 errored' "$work/h2load2.txt"
check "demo exits 0 with a summary" bash -c "[ $code = 0 ] && grep -q 'shutdown complete in' '$work/demo.err'"
check "new connections refused after exit" bash -c "! curl -sS -m 2 '$addr/' >/dev/null 2>&1"

if [ "$failed" != 0 ]; then
  echo "--- demo stderr"; cat "$work/demo.err"
  echo "--- h2load (steady)"; cat "$work/h2load1.txt"
  echo "--- h2load (through SIGTERM)"; cat "$work/h2load2.txt"
fi
echo "interop: $passed passed, $failed failed"
[ "$failed" = 0 ]
