#!/usr/bin/env bash
# Checks per second from Go on a hot valid key, in one goroutine and in
# parallel (GOMAXPROCS = all cores), against the cost of a trivial cgo call
# (ms_status_http) measured in the same run. Not part of test.sh.
# BENCHTIME (default 3s) and COUNT (default 3; the median is quoted) tune it.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
. "$HERE/env.sh"
cd "$HERE"
go version
echo "cores: $(nproc)"
log="$GOBUILD/bench.log"
go test -run '^$' -bench . -benchmem -benchtime "${BENCHTIME:-3s}" -count "${COUNT:-3}" ./msauth | tee "$log"

# Median ns/op of each benchmark, then checks/s and the ratio to the baseline.
awk '
  /^Benchmark/ { name = $1; sub(/-[0-9]+$/, "", name); v[name] = v[name] " " $3 }
  function median(s,   a, n, i, j, t) {
    n = split(s, a, " ")
    for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (a[j] + 0 < a[i] + 0) { t = a[i]; a[i] = a[j]; a[j] = t }
    return a[int((n + 1) / 2)]
  }
  END {
    one = median(v["BenchmarkCheckHot"]); par = median(v["BenchmarkCheckHotParallel"])
    base = median(v["BenchmarkCgoBaseline"]); basep = median(v["BenchmarkCgoBaselineParallel"])
    mw = median(v["BenchmarkMiddleware"]); lim = median(v["BenchmarkCheckLimited"]); inc = median(v["BenchmarkCheckInC"])
    printf "\n== summary (median of runs)\n"
    printf "check, 1 goroutine:        %8.0f ns  %10.0f checks/s\n", one, 1e9 / one
    printf "check with RateLimit fields: %6.0f ns  %10.0f checks/s\n", lim, 1e9 / lim
    printf "check, parallel:           %8.0f ns  %10.0f checks/s\n", par, 1e9 / par
    printf "check looped inside C:     %8.0f ns  %10.0f checks/s  (binding overhead %.0f ns)\n", inc, 1e9 / inc, one - inc
    printf "middleware, 1 goroutine:   %8.0f ns  %10.0f requests/s\n", mw, 1e9 / mw
    printf "cgo baseline (ms_status_http): %6.1f ns  (parallel %.1f ns)\n", base, basep
    printf "a check costs %.0fx a bare cgo call\n", one / base
  }' "$log"
