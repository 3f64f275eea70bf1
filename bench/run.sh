#!/usr/bin/env bash
# The proof, in one command: builds what it needs, runs every experiment on
# 127.0.0.1 (each bounded in time), writes BENCHMARKS.md and PNG plots in
# bench/plots/. Full run about 45 minutes; `--quick` about 10 (shorter runs,
# for a look, not for quoting).
#
#   bench/run.sh [--quick]
#
# Needs (Debian): wrk nghttp2-client golang-go nginx haproxy
# libserver-starter-perl nodejs python3 python3-matplotlib openssl; installed here when
# running as root.
set -euo pipefail
cd "$(dirname "$0")/.."

quick=0
[ "${1:-}" = "--quick" ] && quick=1

need=()
for pair in wrk:wrk h2load:nghttp2-client go:golang-go nginx:nginx haproxy:haproxy \
  start_server:libserver-starter-perl node:nodejs python3:python3 openssl:openssl; do
  command -v "${pair%%:*}" >/dev/null || need+=("${pair##*:}")
done
/usr/bin/python3 -c 'import matplotlib' 2>/dev/null || need+=(python3-matplotlib)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && apt-get install -y -qq "${need[@]}" >/dev/null
  else
    echo "bench: install ${need[*]} (Debian packages) first" >&2; exit 1
  fi
fi

cargo build --release -q -p lameduck-cli -p lameduck-bench
bin=target/release
if [ $quick = 1 ]; then
  rounds=1 secs=5 runs=3 restart_secs=10 torture_secs=15 rolling_secs=15 idle=2000 active=200 run_secs=10
else
  rounds=3 secs=10 runs=5 restart_secs=60 torture_secs=60 rolling_secs=40 idle=10000 active=1000 run_secs=60
fi

out=$(mktemp)
trap 'rm -f "$out"' EXIT
{
  echo "# Benchmarks"
  echo
  echo "Produced by \`bench/run.sh$( [ $quick = 1 ] && echo ' --quick')\` on $(date -u +%Y-%m-%d), on this project's machine:"
  echo "$(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB, $(uname -sr), loopback only. The load generators share the"
  echo "cores with the servers, and the machine is shared and noisy: quote the ratios between peers measured in the same run,"
  echo "not the absolute figures. Every lameduck figure is reported as measured, target met or not."
  echo
  echo "Plots: \`bench/plots/*.png\`."
  echo
  echo "Targets (issue: proof): overhead ≥ 0.98 of bare hyper-util; drain-detection delay < 5 ms; zero failed requests during restarts."
  echo
  "$bin/lameduck-bench" overhead --rounds "$rounds" --seconds "$secs"
  echo
  "$bin/lameduck-bench" tls-overhead --rounds "$rounds" --seconds "$secs"
  echo
  "$bin/lameduck-bench" drain-delay --runs "$runs"
  echo
  "$bin/lameduck-bench" idle-exit --runs "$runs"
  echo
  if [ -x "$bin/scale" ]; then "$bin/scale" --idle "$idle" --active "$active"; echo; fi
  "$bin/lameduck-bench" restart-load --connections 64,256 --seconds "$restart_secs" --every 2
  # The peers' rows go into the same table, without their own header.
  for c in 64 256; do
    bench/scripts/restart_peers.sh --seconds "$restart_secs" --every 2 --connections "$c" | grep '^| [0-9]'
  done
  echo
  if [ -x "$bin/torture" ]; then "$bin/torture" --seconds "$torture_secs" --every-ms 500 --faults || true; echo; fi
  bench/scripts/rolling_haproxy.sh --seconds "$rolling_secs"
  echo
  # `lameduck run`: Go, Python, Node and the demo as children, next to
  # start_server and stop-then-start.
  "$bin/lameduck-bench" run-restart --seconds "$run_secs" --every 2
} | tee "$out"
cp "$out" BENCHMARKS.md
/usr/bin/python3 bench/plot.py BENCHMARKS.md bench/plots
echo "bench: wrote BENCHMARKS.md and bench/plots/" >&2
