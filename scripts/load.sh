#!/usr/bin/env bash
# Load test on this machine: builds the release binary, starts `odata-delta-gateway demo` for its
# sample upstream, puts a second, separate gateway process in front of that upstream (so its RSS is
# the gateway's alone), and drives it with wrk:
#
#   upstream_entity   GET Products(1) straight to the sample upstream (the baseline)
#   proxy_entity      the same through the gateway (pass-through)
#   upstream_page     GET Products?$top=100 straight to the sample upstream
#   proxy_page        the same through the gateway (streamed, links rewritten)
#   delta_poll        CONNECTIONS clients polling one delta link (each poll refreshes the feed:
#                     concurrent polls share one refresh)
#   tracked_read      CONNECTIONS clients each doing a tracked read of all 300 products
#
# and prints requests/s, latency and the gateway's resident memory (VmRSS, and VmHWM = peak) from
# /proc. All traffic stays on 127.0.0.1; every run is bounded by DURATION.
#
# Environment: DURATION (default 10s), CONNECTIONS (16), THREADS (2), CHANGE_EVERY_SECS (5: how
# often the sample upstream changes its data), CARGO_TARGET_DIR (as for cargo).
set -euo pipefail

cd "$(dirname "$0")/.."
DURATION=${DURATION:-10s}
CONNECTIONS=${CONNECTIONS:-16}
THREADS=${THREADS:-2}
CHANGE_EVERY_SECS=${CHANGE_EVERY_SECS:-5}
TARGET_DIR=${CARGO_TARGET_DIR:-target}
BIN="$TARGET_DIR/release/odata-delta-gateway"
SERVICE=/odata/v4/catalog

if ! command -v wrk >/dev/null; then
    if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
        echo "== installing wrk" >&2
        apt-get update -qq >/dev/null
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null
    else
        echo "wrk is not installed and cannot be installed here (needs apt-get as root)" >&2
        exit 1
    fi
fi
for tool in curl sed awk; do
    command -v "$tool" >/dev/null || { echo "$tool is needed" >&2; exit 1; }
done

echo "== building $BIN" >&2
cargo build --release --quiet

WORK=$(mktemp -d)
DEMO_PID=""
GW_PID=""
cleanup() {
    [ -n "$GW_PID" ] && kill "$GW_PID" 2>/dev/null && wait "$GW_PID" 2>/dev/null
    [ -n "$DEMO_PID" ] && kill "$DEMO_PID" 2>/dev/null && wait "$DEMO_PID" 2>/dev/null
    rm -rf "$WORK"
}
trap cleanup EXIT

# Wait until a log file has a line matching a pattern, and print the first match of a second one.
wait_for() {
    local file=$1 pattern=$2 extract=$3
    for _ in $(seq 1 100); do
        if grep -q "$pattern" "$file" 2>/dev/null; then
            grep "$pattern" "$file" | head -1 | grep -o "$extract" | head -1
            return 0
        fi
        sleep 0.1
    done
    echo "timed out waiting for '$pattern' in $file:" >&2
    cat "$file" >&2
    return 1
}

"$BIN" demo --listen 127.0.0.1:0 --data-dir "$WORK/demo-data" \
    --change-every-secs "$CHANGE_EVERY_SECS" >"$WORK/demo.out" 2>"$WORK/demo.err" &
DEMO_PID=$!
UPSTREAM=$(wait_for "$WORK/demo.out" "sample upstream:" "http://[0-9.:]*$SERVICE")
echo "== sample upstream: $UPSTREAM" >&2

"$BIN" --upstream "$UPSTREAM" --listen 127.0.0.1:0 --admin-listen 127.0.0.1:0 \
    --data-dir "$WORK/gw-data" 2>"$WORK/gw.err" &
GW_PID=$!
GW_ADDR=$(wait_for "$WORK/gw.err" "gateway listening" "addr=[0-9.:]*" | cut -d= -f2)
GW="http://$GW_ADDR$SERVICE"
echo "== gateway (pid $GW_PID): $GW" >&2

rss() { awk '/^VmRSS/ {r=$2} /^VmHWM/ {h=$2} END {printf "%.1f MiB (peak %.1f MiB)", r/1024, h/1024}' "/proc/$GW_PID/status"; }

# Warm up the pass-through path and $metadata, and fix the delta link the pollers share.
curl -sf "$GW/Products(1)" >/dev/null
DELTA=$(curl -sf -H 'Prefer: odata.track-changes' "$GW/Products" |
    sed -n 's/.*"@odata.deltaLink":"\([^"]*\)".*/\1/p')
[ -n "$DELTA" ] || { echo "no delta link from $GW/Products" >&2; exit 1; }
echo "== delta link: $DELTA" >&2
echo "== gateway RSS at start: $(rss)" >&2

RESULTS="$WORK/results"
: >"$RESULTS"
run() {
    local name=$1 url=$2
    shift 2
    echo "== $name: wrk -t$THREADS -c$CONNECTIONS -d$DURATION $* $url" >&2
    local out="$WORK/$name.wrk"
    wrk -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" --latency "$@" "$url" >"$out"
    local rps avg p50 p99 errors
    rps=$(awk '/^Requests\/sec:/ {print $2}' "$out")
    avg=$(awk '$1 == "Latency" {print $2; exit}' "$out")
    p50=$(awk '$1 == "50%" {print $2}' "$out")
    p99=$(awk '$1 == "99%" {print $2}' "$out")
    errors=$(awk '/Non-2xx or 3xx responses:/ {print $NF} /Socket errors:/ {print "socket-errors"}' "$out" | paste -sd' ')
    printf '%-16s %10s %9s %9s %9s  %-28s %s\n' "$name" "$rps" "$avg" "$p50" "$p99" "$(rss)" "${errors:-}" >>"$RESULTS"
}

run upstream_entity "$UPSTREAM/Products(1)"
run proxy_entity "$GW/Products(1)"
run upstream_page "$UPSTREAM/Products?\$top=100"
run proxy_page "$GW/Products?\$top=100"
run delta_poll "$DELTA"
run tracked_read "$GW/Products" -H 'Prefer: odata.track-changes'

ADMIN=$(wait_for "$WORK/gw.err" "gateway listening" "admin=Some([0-9.:]*" | cut -d'(' -f2)
METRICS=$(curl -sf "http://$ADMIN/metrics" || true)
REFRESHES=$(awk '/^odg_refreshes_total/ {s += $NF} END {print s + 0}' <<<"$METRICS")
REUSED=$(awk '/^odg_refresh_reused_total/ {print $NF}' <<<"$METRICS")

echo
echo "odata-delta-gateway load test: $(nproc) cores, $THREADS wrk threads, $CONNECTIONS connections, $DURATION per run"
echo "(wrk, the sample upstream and the gateway share this machine; compare rows of one run)"
printf '%-16s %10s %9s %9s %9s  %-28s %s\n' scenario "req/s" "avg" "p50" "p99" "gateway RSS after" "errors"
cat "$RESULTS"
echo "refreshes run: $REFRESHES; tracked requests that shared a concurrent refresh: ${REUSED:-?}"
