#!/usr/bin/env bash
# Instructions per request of one peer, counted by callgrind: immune to the
# noise of a shared machine, unlike requests per second. The count covers
# the whole process (start-up and exit included), so use enough requests.
#
#   bench/scripts/instructions.sh target/release/lameduck-peer MODE [REQUESTS]
#
# MODE:
#   h1          HTTP/1.1, h2load --h1 -c16 (keep-alive)
#   h2          HTTP/2 (h2c), h2load -c16 -m16
#   h1-tls      HTTP/1.1 over TLS, as h1 (16 handshakes in all)
#   h2-tls      HTTP/2 over TLS (h2 by ALPN), as h2
#   handshake   REQUESTS connections over TLS with one HTTP/1.1 request
#               each: h2load --h1 -c50 -n50, REQUESTS/50 times; every
#               h2load client is a fresh OpenSSL session, so every
#               handshake is a full one (hyper-peer prints the count).
# The TLS modes pass `--tls CERT,KEY` to the peer, with a self-signed P-256
# certificate made by openssl. Needs valgrind and h2load (nghttp2-client).
set -euo pipefail
cd "$(dirname "$0")/../.."
. bench/scripts/ports.sh

bin=$1 mode=$2 n=${3:-40000}
free_port
port=$port_out
out=$(mktemp) err=$(mktemp) dir=$(mktemp -d)
trap 'rm -rf "$out" "$err" "$dir"' EXIT
scheme=http tls=()
case $mode in
    h1 | h2) ;;
    h1-tls | h2-tls | handshake)
        scheme=https
        openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
            -subj /CN=localhost -keyout "$dir/key.pem" -out "$dir/cert.pem" 2>/dev/null
        tls=(--tls "$dir/cert.pem,$dir/key.pem")
        ;;
    *) echo "mode: h1, h2, h1-tls, h2-tls or handshake" >&2; exit 2 ;;
esac
url="$scheme://127.0.0.1:$port/"
valgrind --tool=callgrind --callgrind-out-file="$out" "$bin" "127.0.0.1:$port" "${tls[@]}" 2>"$err" &
peer=$!
for _ in $(seq 1 300); do grep -q ready "$err" && break; sleep 0.1; done
case $mode in
    h1 | h1-tls) h2load --h1 -n "$n" -c 16 -t 1 "$url" | grep -E '^requests:' ;;
    h2 | h2-tls) h2load -n "$n" -c 16 -m 16 -t 1 "$url" | grep -E '^requests:' ;;
    handshake)
        for _ in $(seq 1 $((n / 50))); do
            h2load --h1 -n 50 -c 50 -t 1 "$url" | grep -E '^requests:' | grep -v ' 50 succeeded' || true
        done
        n=$((n / 50 * 50))
        ;;
esac
kill -TERM "$peer"
wait "$peer" || true
grep -h 'TLS handshakes' "$err" || true
total=$(sed -nE 's/.*Collected : ([0-9]+).*/\1/p' "$err")
echo "$bin $mode: $total instructions, $((total / n)) per request"
