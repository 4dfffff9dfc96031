#!/usr/bin/env bash
# Pass-through cost of one hop, measured side by side: a small entity GET (about 250 bytes of JSON,
# as an OData service answers `GET Products(1)`) served by nginx as the fast upstream, fetched
#
#   direct      straight from the upstream nginx
#   nginx       through an nginx reverse-proxy hop (keep-alive to the upstream)
#   gateway     through odata-delta-gateway
#   <name>      through any other gateway binary given as NAME=PATH arguments (e.g. an older build)
#
# with wrk at -c1, -c16 and -c64. Targets are measured in ROUNDS interleaved rounds (every target
# once per round, in turn) so that load from other processes hits all of them alike; the report
# gives the median of the rounds for requests/s and p50 latency, the median hop cost at -c1
# (p50 through the hop minus p50 direct, in the same round), and the CPU time each hop spent per
# request, which stays comparable when other processes compete for the cores.
#
#   scripts/passthrough.sh                               # the release build of this tree
#   scripts/passthrough.sh base=/tmp/pt-base/target/release/odata-delta-gateway
#
# Environment: DURATION per wrk run (default 5s), ROUNDS (5), CONNECTIONS ("1 16 64"), THREADS (2),
# SKIP_BUILD=1 to use target/release as it is. Needs wrk and nginx (Debian: `apt-get install wrk
# nginx-light`). All traffic stays on 127.0.0.1.
set -euo pipefail

cd "$(dirname "$0")/.."
DURATION=${DURATION:-5s}
ROUNDS=${ROUNDS:-5}
CONNECTIONS=${CONNECTIONS:-1 16 64}
THREADS=${THREADS:-2}
TARGET_DIR=${CARGO_TARGET_DIR:-target}
BIN="$TARGET_DIR/release/odata-delta-gateway"
ROOT=/odata/v4/shop
ENTITY='Products(1)'

for tool in wrk nginx curl awk sort; do
    command -v "$tool" >/dev/null || { echo "$tool is needed (apt-get install wrk nginx-light)" >&2; exit 1; }
done
if [ "${SKIP_BUILD:-}" != 1 ]; then
    echo "== building $BIN" >&2
    cargo build --release --quiet --bin odata-delta-gateway
fi

WORK=$(mktemp -d)
# nginx workers run as another user when started as root: they must read the files.
chmod 755 "$WORK"
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    [ -n "${KEEP_WORK:-}" ] || rm -rf "$WORK"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() {
    for _ in $(seq 1 100); do
        curl -s -o /dev/null "http://127.0.0.1:$1/" && return 0
        sleep 0.1
    done
    echo "nothing listens on port $1" >&2
    return 1
}

# The entity as a CAP-like service renders it: relative context URL, a few properties.
BODY='{"@odata.context":"$metadata#Products/$entity","ID":1,"name":"Product 1","description":"A product of the sample catalogue, with a description long enough to be typical","price":12.5,"currency":"EUR","stock":42,"modifiedAt":"2026-11-30T10:00:00Z"}'

# nginx, one master-less process per role with all its files in its own directory.
start_nginx() {
    local name=$1 port=$2 server=$3 dir="$WORK/$1"
    mkdir -p "$dir"
    cat >"$dir/nginx.conf" <<EOF
worker_processes auto;
pid $dir/nginx.pid;
error_log $dir/error.log warn;
events { worker_connections 1024; }
http {
    access_log off;
    client_body_temp_path $dir/body;
    proxy_temp_path $dir/proxy;
    upstream upstream_nginx { server 127.0.0.1:$UPSTREAM_PORT; keepalive 128; }
    server {
        listen 127.0.0.1:$port;
        $server
    }
}
EOF
    nginx -p "$dir" -c "$dir/nginx.conf" -g 'daemon off;' -e "$dir/error.log" &
    PIDS+=($!)
    wait_port "$port"
}

UPSTREAM_PORT=$(free_port)
mkdir -p "$WORK/files"
printf '%s' "$BODY" >"$WORK/files/$ENTITY"
start_nginx upstream "$UPSTREAM_PORT" "location $ROOT/ { default_type application/json; alias $WORK/files/; }"
HOP_PORT=$(free_port)
start_nginx hop "$HOP_PORT" "location / { proxy_pass http://upstream_nginx; proxy_http_version 1.1; proxy_set_header Connection \"\"; proxy_set_header Host \$host; }"

declare -A URL
# Processes whose CPU time a target's requests cost: the upstream's workers for direct, the hop's
# workers for the hops (the upstream costs the same behind every hop).
declare -A CPU_PIDS
NAMES=(direct nginx)
URL[direct]="http://127.0.0.1:$UPSTREAM_PORT$ROOT/$ENTITY"
URL[nginx]="http://127.0.0.1:$HOP_PORT$ROOT/$ENTITY"
CPU_PIDS[direct]=$(pgrep -P "${PIDS[0]}" | paste -sd' ')
CPU_PIDS[nginx]=$(pgrep -P "${PIDS[1]}" | paste -sd' ')

start_gateway() {
    local name=$1 bin=$2 port
    port=$(free_port)
    # --upstream needs a $metadata only for tracked requests; a pass-through never asks for it.
    "$bin" --upstream "http://127.0.0.1:$UPSTREAM_PORT$ROOT" --listen "127.0.0.1:$port" \
        --data-dir "$WORK/data-$name" 2>"$WORK/$name.err" &
    PIDS+=($!)
    CPU_PIDS[$name]=$!
    wait_port "$port"
    NAMES+=("$name")
    URL[$name]="http://127.0.0.1:$port$ROOT/$ENTITY"
}
start_gateway gateway "$BIN"
for arg in "$@"; do
    start_gateway "${arg%%=*}" "${arg#*=}"
done

for name in "${NAMES[@]}"; do
    got=$(curl -sf "${URL[$name]}") || { echo "$name does not answer ${URL[$name]}" >&2; exit 1; }
    [ "$got" = "$BODY" ] || { echo "$name answers another body: $got" >&2; exit 1; }
done

# User + system CPU ticks of some processes.
cpu_ticks() {
    local sum=0 pid
    for pid in $1; do
        sum=$((sum + $(awk '{print $14 + $15}' "/proc/$pid/stat")))
    done
    echo "$sum"
}
# wrk's latency figures in µs.
to_us() { awk '{v=$1; u=v; sub(/[0-9.]+/, "", u); sub(/[a-z]+$/, "", v); f = (u=="us") ? 1 : (u=="ms") ? 1000 : (u=="s") ? 1000000 : 1; printf "%.0f\n", v * f}'; }
RESULTS="$WORK/results"
: >"$RESULTS"
for round in $(seq 1 "$ROUNDS"); do
    for c in $CONNECTIONS; do
        t=$THREADS
        [ "$c" -lt "$t" ] && t=$c
        for name in "${NAMES[@]}"; do
            before=$(cpu_ticks "${CPU_PIDS[$name]}")
            out=$(wrk -t"$t" -c"$c" -d"$DURATION" --latency "${URL[$name]}")
            after=$(cpu_ticks "${CPU_PIDS[$name]}")
            rps=$(awk '/^Requests\/sec:/ {print $2}' <<<"$out")
            p50=$(awk '$1 == "50%" {print $2}' <<<"$out" | to_us)
            requests=$(awk '/requests in/ {print $1}' <<<"$out")
            cpu=$(awk -v t=$((after - before)) -v n="$requests" -v hz="$(getconf CLK_TCK)" 'BEGIN {printf "%.1f", t * 1000000 / hz / n}')
            errors=$(awk '/Non-2xx|Socket errors/' <<<"$out")
            [ -z "$errors" ] || echo "round $round $name -c$c: $errors" >&2
            echo "$round $c $name $rps $p50 $cpu" >>"$RESULTS"
            echo "round $round -c$c $name: $rps req/s, p50 ${p50} µs, ${cpu} µs CPU/request" >&2
        done
    done
done

median() { sort -n | awk '{a[NR]=$1} END {if (NR%2) print a[(NR+1)/2]; else printf "%.1f\n", (a[NR/2]+a[NR/2+1])/2}'; }
echo
echo "pass-through of GET $ROOT/$ENTITY: $(nproc) cores, wrk -t$THREADS, $DURATION per run, median of $ROUNDS interleaved rounds"
printf '%-12s' target
for c in $CONNECTIONS; do printf ' %12s %9s' "-c$c req/s" "p50 µs"; done
echo
for name in "${NAMES[@]}"; do
    printf '%-12s' "$name"
    for c in $CONNECTIONS; do
        rps=$(awk -v c="$c" -v n="$name" '$2 == c && $3 == n {print $4}' "$RESULTS" | median)
        p50=$(awk -v c="$c" -v n="$name" '$2 == c && $3 == n {print $5}' "$RESULTS" | median)
        printf ' %12s %9s' "$rps" "$p50"
    done
    echo
done
echo
echo "CPU per request of the target's own processes (µs; the upstream's for direct, the hop's otherwise):"
printf '%-12s' target
for c in $CONNECTIONS; do printf ' %9s' "-c$c"; done
echo
for name in "${NAMES[@]}"; do
    printf '%-12s' "$name"
    for c in $CONNECTIONS; do
        printf ' %9s' "$(awk -v c="$c" -v n="$name" '$2 == c && $3 == n {print $6}' "$RESULTS" | median)"
    done
    echo
done
first_c=${CONNECTIONS%% *}
echo
echo "added p50 at -c$first_c (hop p50 minus direct p50 of the same round, median of rounds):"
for name in "${NAMES[@]}"; do
    [ "$name" = direct ] && continue
    added=$(awk -v c="$first_c" -v n="$name" '$2 == c && $3 == "direct" {d[$1]=$5} $2 == c && $3 == n {h[$1]=$5} END {for (r in h) print h[r] - d[r]}' "$RESULTS" | median)
    echo "  $name: $added µs"
done
echo
echo "throughput ratio to the nginx hop (median over rounds of the per-round ratio):"
for c in $CONNECTIONS; do
    for name in "${NAMES[@]}"; do
        case $name in direct|nginx) continue ;; esac
        ratio=$(awk -v c="$c" -v n="$name" '$2 == c && $3 == "nginx" {g[$1]=$4} $2 == c && $3 == n {h[$1]=$4} END {for (r in h) printf "%.3f\n", h[r] / g[r]}' "$RESULTS" | median)
        echo "  -c$c $name / nginx: $ratio"
    done
done
