#!/usr/bin/env bash
# Requests/s through nginx on loopback, measured with wrk in one run:
#   return 200 without the module   vs   the same location with "ms_auth on" (valid key)
#   a static file without the module vs  with "ms_auth on"  vs  with limit_req keyed on the header
# (limit_req sits in the preaccess phase, after "return", so it is compared on a static file.)
# Each variant gets requests/s and the nginx workers' own CPU time per request (user + system from
# /proc): on shared cores requests/s moves with how wrk and other tenants are scheduled, by more than the
# module costs; the workers' CPU time per request shows what the module itself adds.
# Run as root from the repository root after cargo build --release:  bash bindings/nginx/bench.sh
# Knobs: BENCH_SECONDS (default 5), BENCH_CONNECTIONS (50), BENCH_ROUNDS (3), BENCH_WORKERS (1).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
LIB_DIR=$(realpath -m "${MS_AUTH_TARGET_DIR:-$REPO/target/release}")
SECONDS_EACH=${BENCH_SECONDS:-5}
CONNS=${BENCH_CONNECTIONS:-50}
ROUNDS=${BENCH_ROUNDS:-3}
WORKERS=${BENCH_WORKERS:-1}

# shellcheck source=lib.sh
. "$HERE/lib.sh"

[ "$(id -u)" -eq 0 ] || { say "run as root"; exit 1; }
ensure_packages nginx nginx-dev wrk python3 curl
bash "$HERE/build.sh"

PREFIX=$REPO/target/nginx/bench-run
rm -rf "$PREFIX"
mkdir -p "$PREFIX/html/static" "$PREFIX/tmp"
echo "ok" >"$PREFIX/html/static/ok.txt"
STORE_DIR=$(mktemp -d /tmp/ms-auth-nginx-bench.XXXXXX)   # reachable by the workers (nobody)
chmod 755 "$STORE_DIR"
chown nobody:nogroup "$STORE_DIR"
cp "$LIB_DIR/ms-auth" "$STORE_DIR/ms-auth"
STORE=$STORE_DIR/keys.db

cleanup() {
    if [ -f "$PREFIX/nginx.pid" ]; then
        kill "$(cat "$PREFIX/nginx.pid")" 2>/dev/null || true
        sleep 0.5
    fi
    rm -rf "$STORE_DIR"
}
trap cleanup EXIT

# a key that neither quota nor rate limit stops during the run
KEY=$(runuser -u nobody -- "$STORE_DIR/ms-auth" --db "$STORE" key create --plan bench \
        --quota 1000000000/day --rate 1000000/s --json \
      | python3 -c 'import json,sys; print(json.load(sys.stdin)["key"])')

PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')

cat >"$PREFIX/nginx.conf" <<CONF
load_module $REPO/target/nginx/ngx_http_ms_auth_module.so;
user nobody nogroup;
worker_processes $WORKERS;
daemon on;
pid $PREFIX/nginx.pid;
error_log $PREFIX/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path $PREFIX/tmp/body;
    proxy_temp_path $PREFIX/tmp/proxy;
    fastcgi_temp_path $PREFIX/tmp/fastcgi;
    uwsgi_temp_path $PREFIX/tmp/uwsgi;
    scgi_temp_path $PREFIX/tmp/scgi;
    keepalive_requests 1000000;
    ms_auth_store $STORE;
    limit_req_zone \$http_x_api_key zone=keys:10m rate=1000000r/s;
    server {
        listen 127.0.0.1:$PORT;
        root $PREFIX/html;
        location = /return/plain { return 200 "ok\n"; }
        location = /return/ms_auth { ms_auth on; return 200 "ok\n"; }
        location /plain/ { alias $PREFIX/html/static/; }
        location /ms_auth/ { ms_auth on; alias $PREFIX/html/static/; }
        location /limit_req/ { limit_req zone=keys burst=1000000 nodelay; alias $PREFIX/html/static/; }
    }
}
CONF
nginx -p "$PREFIX/" -c "$PREFIX/nginx.conf"
sleep 0.5

# sanity: the module admits the key and refuses a request without it
[ "$(curl -s -o /dev/null -w '%{http_code}' -H "X-API-Key: $KEY" "http://127.0.0.1:$PORT/return/ms_auth")" = 200 ]
[ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$PORT/return/ms_auth")" = 401 ]

worker_ticks() {   # CPU time of every worker so far (user + system, in clock ticks)
    local total=0 pid
    for pid in $(pgrep -P "$(cat "$PREFIX/nginx.pid")"); do
        total=$((total + $(awk '{print $14 + $15}' "/proc/$pid/stat")))
    done
    echo "$total"
}

run() {   # path -> "requests/s worker-CPU-µs-per-request" (fails if any answer was not 2xx)
    local out before after
    before=$(worker_ticks)
    out=$(wrk -t1 -c"$CONNS" -d"${SECONDS_EACH}s" -H "X-API-Key: $KEY" "http://127.0.0.1:$PORT$1")
    after=$(worker_ticks)
    if grep -q "Non-2xx" <<<"$out"; then
        say "non-2xx answers on $1:"; echo "$out" >&2; exit 1
    fi
    # The workers' own CPU time per request: what the module adds, apart from how wrk and the machine's
    # other tenants share the cores (which moves requests/s by more than the module costs).
    awk -v ticks=$((after - before)) -v hz="$(getconf CLK_TCK)" '
        /requests in/ {n = $1} /^Requests\/sec:/ {rps = $2}
        END {printf "%s %.3f\n", rps, ticks * 1e6 / hz / n}' <<<"$out"
}

PATHS="/return/plain /return/ms_auth /plain/ok.txt /ms_auth/ok.txt /limit_req/ok.txt"
declare -A RESULTS CPU
wrk -t1 -c"$CONNS" -d2s -H "X-API-Key: $KEY" "http://127.0.0.1:$PORT/return/ms_auth" >/dev/null  # warm-up
read -ra ORDER <<<"$PATHS"
for round in $(seq "$ROUNDS"); do
    # Interleaved, so drift hits every variant alike, and each round starts one variant later, so no
    # variant always runs right after the same other one.
    shift_by=$(((round - 1) % ${#ORDER[@]}))
    for p in "${ORDER[@]:shift_by}" "${ORDER[@]:0:shift_by}"; do
        read -r rps cpu <<<"$(run "$p")"
        RESULTS[$p]="${RESULTS[$p]:-} $rps"
        CPU[$p]="${CPU[$p]:-} $cpu"
    done
    say "round $round/$ROUNDS done"
done

median() { tr ' ' '\n' <<<"$1" | grep . | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

echo
echo "nginx $(nginx -v 2>&1 | sed 's/.*nginx\///'), $WORKERS worker(s), wrk -t1 -c$CONNS -d${SECONDS_EACH}s, median of $ROUNDS rounds, $(nproc) cores"
echo
printf '| %-44s | %12s | %9s | %14s | %9s |\n' "location" "requests/s" "vs plain" "worker µs/req" "vs plain"
printf '|%s|%s|%s|%s|%s|\n' "----------------------------------------------" "--------------" "-----------" "----------------" "-----------"
row() {   # label path baseline-path
    local v b c cb
    v=$(median "${RESULTS[$2]}")
    b=$(median "${RESULTS[$3]}")
    c=$(median "${CPU[$2]}")
    cb=$(median "${CPU[$3]}")
    printf '| %-44s | %12.0f | %8.1f%% | %14.2f | %8.1f%% |\n' "$1" "$v" "$(awk -v v="$v" -v b="$b" 'BEGIN {print 100*v/b}')" \
        "$c" "$(awk -v v="$c" -v b="$cb" 'BEGIN {print 100*v/b}')"
}
row "return 200, no module"                 /return/plain   /return/plain
row "return 200, ms_auth on (valid key)"    /return/ms_auth /return/plain
row "static file, no module"                /plain/ok.txt   /plain/ok.txt
row "static file, ms_auth on (valid key)"   /ms_auth/ok.txt /plain/ok.txt
row "static file, limit_req on the header"  /limit_req/ok.txt /plain/ok.txt
