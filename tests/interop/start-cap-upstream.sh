#!/usr/bin/env bash
# start-cap-upstream.sh - run a real SAP CAP (Node.js, @sap/cds 10) OData V4 service on loopback for
# the interop tests: one entity set `Customers` (Integer key ID) backed by SQLite, with full CRUD.
#
# Usage:
#   start-cap-upstream.sh [start] [--dir DIR] [--name NAME] [--port PORT] [--rows N] [--page-size P]
#                                 [--reliable-paging] [--owner-pid PID]
#   start-cap-upstream.sh stop    [--dir DIR] [--name NAME]     # no --name: stop every instance of DIR
#   start-cap-upstream.sh status  [--dir DIR] [--name NAME]
#
#   --dir        install/work folder (default $CAP_UPSTREAM_DIR, else target/cap-upstream of this repo)
#   --name       instance name: its database, log and pid file (default port-PORT, or cap-<shell pid>)
#   --port       TCP port on 127.0.0.1 (default 0: a free port chosen by the OS, race-free)
#   --rows       number of deterministic Customers rows, ID 1..N (default 1000)
#   --page-size  server-driven page size = cds.query.limit.default = .max (default 1000, CAP's own max)
#   --reliable-paging  CAP's keyset $skiptoken (base64 JSON) instead of numeric offsets
#   --owner-pid  the server exits by itself once this process is gone (no orphans after a killed test)
#
# `start` prints (stdout, eval-able):
#   CAP_NAME=<name> CAP_PID=<pid> CAP_PORT=<port> CAP_BASE_URL=http://127.0.0.1:<port>/odata/v4/customers
#   CAP_LOG=<file>
# Each start (re)starts the named instance with a pristine copy of the N-row database.
# Needs: bash, flock, node + npm (Node 22 is fetched from the npm registry when the local one is older
# than 22.13, since @sap/cds 10 needs it). Only the npm registry is contacted, and only on the first run
# for a DIR. Do not set NODE_ENV=production: it turns on JWT authentication.
set -euo pipefail

CDS_VERSION=10.1.1
SQLITE_VERSION=3.1.1
EXPRESS_VERSION=5.3.0
NODE_PKG_VERSION=22.23.3
SERVICE_PATH=/odata/v4/customers
HOST=127.0.0.1

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cmd=start
case "${1:-}" in start|stop|status) cmd=$1; shift ;; esac
DIR=${CAP_UPSTREAM_DIR:-$here/../../target/cap-upstream}
NAME=""; PORT=0; ROWS=1000; PAGE=1000; RELIABLE=false; OWNER=""
while [ $# -gt 0 ]; do
  case "$1" in
    --dir) DIR=$2; shift 2 ;;
    --name) NAME=$2; shift 2 ;;
    --port) PORT=$2; shift 2 ;;
    --rows) ROWS=$2; shift 2 ;;
    --page-size) PAGE=$2; shift 2 ;;
    --reliable-paging) RELIABLE=true; shift ;;
    --owner-pid) OWNER=$2; shift 2 ;;
    -h|--help) sed -n '2,27p' "$0"; exit 0 ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
done
[[ "$ROWS" =~ ^[0-9]+$ && "$PAGE" =~ ^[1-9][0-9]*$ && "$PORT" =~ ^[0-9]+$ ]] \
  || { echo "--rows, --page-size and --port must be integers" >&2; exit 2; }
[ -z "$OWNER" ] || [[ "$OWNER" =~ ^[1-9][0-9]*$ ]] || { echo "--owner-pid must be a pid" >&2; exit 2; }
[ -z "$NAME" ] || [[ "$NAME" =~ ^[A-Za-z0-9._-]+$ ]] || { echo "--name: letters, digits, . _ - only" >&2; exit 2; }
mkdir -p "$DIR"; DIR=$(cd "$DIR" && pwd)
APP=$DIR/app RUN=$DIR/run CACHE=$DIR/cache
log() { echo "[cap-upstream] $*" >&2; }

# ---------------------------------------------------------------- stop / status
pid_alive_ours() { # pid -> 0 if it is a running CAP server started from $APP
  local pid=$1
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null \
    && tr '\0' ' ' < "/proc/$pid/cmdline" 2>/dev/null | grep -qF "$APP/node_modules/@sap/cds/bin/serve.js"
}
stop_one() { # name
  local base=$RUN/$1 pid
  pid=$(cut -d' ' -f1 "$base.pid" 2>/dev/null || true)
  if pid_alive_ours "$pid"; then
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 30); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$pid" 2>/dev/null; then kill -KILL "$pid" 2>/dev/null || true; sleep 0.2; fi
    log "stopped $1 (pid $pid)"
  fi
  rm -f "$base.pid" "$base.sqlite" "$base.sqlite-journal" "$base.sqlite-wal" "$base.sqlite-shm" "$base.log"
}
names_of_dir() { [ -d "$RUN" ] && for f in "$RUN"/*.pid; do [ -e "$f" ] && basename "$f" .pid; done; true; }

if [ "$cmd" = stop ]; then
  if [ -n "$NAME" ]; then stop_one "$NAME"; else for n in $(names_of_dir); do stop_one "$n"; done; fi
  exit 0
fi
if [ "$cmd" = status ]; then
  rc=1
  for n in ${NAME:-$(names_of_dir)}; do
    read -r pid port < "$RUN/$n.pid" 2>/dev/null || { pid=""; port=""; }
    if pid_alive_ours "$pid"; then echo "$n: running, pid $pid, http://$HOST:$port$SERVICE_PATH"; rc=0
    else echo "$n: not running"; fi
  done
  exit $rc
fi
if [ -z "$NAME" ]; then
  if [ "$PORT" != 0 ]; then NAME=port-$PORT; else NAME=cap-$$; fi
fi

# ---------------------------------------------------------------- install (once per DIR)
exec 9>"$DIR/.lock"; flock 9   # serialise concurrent installs and template builds on one DIR
mkdir -p "$APP/db" "$APP/srv" "$RUN" "$CACHE"

write_if_changed() { # file ; content on stdin
  local tmp; tmp=$(mktemp); cat > "$tmp"
  if cmp -s "$tmp" "$1"; then rm -f "$tmp"; else mv "$tmp" "$1"; fi
}

write_if_changed "$APP/package.json" <<EOF
{
  "name": "cap-upstream",
  "version": "1.0.0",
  "private": true,
  "description": "SAP CAP OData V4 upstream for the gateway's interop tests",
  "dependencies": {
    "@sap/cds": "$CDS_VERSION",
    "@cap-js/sqlite": "$SQLITE_VERSION",
    "express": "$EXPRESS_VERSION"
  },
  "cds": {
    "requires": { "db": { "kind": "sqlite", "credentials": { "url": "db.sqlite" } } },
    "server": { "force_exit_timeout": 300 }
  }
}
EOF
write_if_changed "$APP/db/schema.cds" <<'EOF'
namespace gw;
entity Customers {
  key ID      : Integer;
  name        : String(100);
  email       : String(200);
  city        : String(60);
  balance     : Decimal(15,2);
  score       : Integer;
  birthday    : Date;
  modifiedAt  : Timestamp @cds.on.insert: $now @cds.on.update: $now;  // server-maintained
}
EOF
write_if_changed "$APP/srv/service.cds" <<'EOF'
using gw from '../db/schema';
service CustomerService @(path:'/odata/v4/customers') {
  entity Customers as projection on gw.Customers;
}
EOF
write_if_changed "$APP/server.js" <<'EOF'
// Project-local server.js, picked up by `cds serve`. Binds to HOST instead of all interfaces (PORT 0
// lets the OS choose a free port), writes "<pid> <port>" to READY_FILE once listening, and exits by
// itself when OWNER_PID is gone.
const cds = require('@sap/cds')
const express = require('express')
const fs = require('fs')
module.exports = async function (o) {
  const app = express()
  const listen = app.listen.bind(app)
  app.listen = (port, ...rest) => listen(Number(port), process.env.HOST || '127.0.0.1', ...rest)
  const server = await cds.server({ ...o, app })
  const ready = () => {
    if (!process.env.READY_FILE) return
    const tmp = process.env.READY_FILE + '.tmp'
    fs.writeFileSync(tmp, `${process.pid} ${server.address().port}\n`)
    fs.renameSync(tmp, process.env.READY_FILE)
  }
  server.listening ? ready() : server.once('listening', ready)
  const owner = Number(process.env.OWNER_PID || 0)
  if (owner > 0) {
    setInterval(() => {
      try { process.kill(owner, 0) } catch (e) { if (e.code === 'ESRCH') process.exit(0) }
    }, 1000).unref()
  }
  return server
}
EOF
write_if_changed "$APP/gen-data.js" <<'EOF'
// node gen-data.js <sqlite-file> <N>: fills gw_Customers with N deterministic rows (ID 1..N).
const { DatabaseSync } = require('node:sqlite')
const [file, n] = [process.argv[2], parseInt(process.argv[3], 10)]
const db = new DatabaseSync(file)
db.exec(`DELETE FROM gw_Customers;
WITH RECURSIVE c(i) AS (SELECT 1 WHERE ${n} > 0 UNION ALL SELECT i + 1 FROM c WHERE i < ${n})
INSERT INTO gw_Customers (ID, name, email, city, balance, score, birthday, modifiedAt)
SELECT i, 'Customer ' || i, 'c' || i || '@example.com',
  CASE i % 8 WHEN 0 THEN 'Berlin' WHEN 1 THEN 'Paris' WHEN 2 THEN 'Rome' WHEN 3 THEN 'Madrid'
             WHEN 4 THEN 'Vienna' WHEN 5 THEN 'Oslo' WHEN 6 THEN 'Lisbon' ELSE 'Prague' END,
  (i * 7919 % 1000000) / 100.0, i * 31 % 1000,
  date('1950-01-01', '+' || (i * 97 % 20000) || ' days'),
  strftime('%Y-%m-%dT%H:%M:%fZ', '2024-01-01', '+' || i || ' seconds')
FROM c;
PRAGMA journal_mode = DELETE;`)
db.close()
EOF

# Node >= 22.13 is needed (@sap/cds 10 requires 22; the sqlite driver uses the built-in node:sqlite).
node_ok() { "$1" -e 'const [a,b]=process.versions.node.split(".").map(Number);process.exit(a>22||(a===22&&b>=13)?0:1)' 2>/dev/null; }
NODE=""
if command -v node >/dev/null && node_ok node; then
  NODE=$(command -v node)
else
  command -v node >/dev/null && command -v npm >/dev/null \
    || { echo "node and npm are needed (e.g. apt-get install nodejs npm)" >&2; exit 3; }
  arch=$(node -p process.arch)
  NODE=$DIR/node/node_modules/node-linux-$arch/bin/node
  if [ ! -x "$NODE" ] || ! node_ok "$NODE"; then
    log "installing Node $NODE_PKG_VERSION from the npm registry into $DIR/node"
    mkdir -p "$DIR/node"
    [ -f "$DIR/node/package.json" ] || echo '{"private":true}' > "$DIR/node/package.json"
    ( cd "$DIR/node" && npm install --no-audit --no-fund --ignore-scripts --loglevel=error \
        "node-linux-$arch@$NODE_PKG_VERSION" >&2 )
  fi
fi
"$NODE" --version >/dev/null
PATH="$(dirname "$NODE"):$PATH"
export PATH

stamp=$(sha256sum < "$APP/package.json" | cut -c1-16)
if [ "$(cat "$APP/node_modules/.cap-upstream-stamp" 2>/dev/null)" != "$stamp" ]; then
  command -v npm >/dev/null || { echo "npm is needed for the first install in $APP" >&2; exit 3; }
  log "npm install in $APP"
  ( cd "$APP" && npm install --no-audit --no-fund --ignore-scripts --prefer-offline --engine-strict=false \
      --loglevel=error >&2 )
  echo "$stamp" > "$APP/node_modules/.cap-upstream-stamp"
fi

# ---------------------------------------------------------------- data (template cached per N)
export NODE_OPTIONS="--disable-warning=ExperimentalWarning"
schema_hash=$(cat "$APP/db/schema.cds" "$APP/srv/service.cds" "$APP/gen-data.js" "$APP/package.json" | sha256sum | cut -c1-12)
TEMPLATE=$CACHE/customers-$ROWS-$schema_hash.sqlite
if [ ! -f "$TEMPLATE" ]; then
  log "building $ROWS-row template database"
  tmp=$CACHE/.tmp-$$.sqlite; rm -f "$tmp" "$tmp-journal"
  ( cd "$APP" && cds_requires_db_credentials_url="$tmp" "$NODE" node_modules/@sap/cds/bin/deploy.js >/dev/null 2>&1 ) \
    || { echo "cds deploy failed" >&2; exit 1; }
  "$NODE" "$APP/gen-data.js" "$tmp" "$ROWS"
  rm -f "$tmp-journal"; mv "$tmp" "$TEMPLATE"
fi

# Instances whose server is gone (a killed test run: the server followed its owner) leave files.
for n in $(names_of_dir); do
  pid_alive_ours "$(cut -d' ' -f1 "$RUN/$n.pid" 2>/dev/null || true)" || stop_one "$n"
done
flock -u 9; exec 9>&-

# ---------------------------------------------------------------- (re)start
stop_one "$NAME"
DB=$RUN/$NAME.sqlite LOG=$RUN/$NAME.log READY=$RUN/$NAME.pid
cp "$TEMPLATE" "$DB"

t0=$(date +%s%N)
( cd "$APP" && exec env NODE_ENV=development HOST="$HOST" PORT="$PORT" READY_FILE="$READY" OWNER_PID="$OWNER" \
    cds_requires_db_credentials_url="$DB" \
    cds_query_limit_default="$PAGE" cds_query_limit_max="$PAGE" cds_query_limit_reliablePaging="$RELIABLE" \
    setsid "$NODE" "$APP/node_modules/@sap/cds/bin/serve.js" ) > "$LOG" 2>&1 < /dev/null &
spawned=$!
for _ in $(seq 1 600); do   # up to 60 s
  [ -s "$READY" ] && break
  if ! kill -0 "$spawned" 2>/dev/null && [ ! -s "$READY" ]; then
    echo "CAP server exited during start; log $LOG:" >&2; tail -20 "$LOG" >&2; exit 1
  fi
  sleep 0.1
done
[ -s "$READY" ] || { echo "CAP server not listening after 60 s; log $LOG" >&2; tail -20 "$LOG" >&2; exit 1; }
read -r pid port < "$READY"
BASE=http://$HOST:$port$SERVICE_PATH
# The server mounts its services before it listens; one request makes sure it answers.
"$NODE" -e 'fetch(process.argv[1]).then(r => process.exit(r.ok ? 0 : 1), () => process.exit(1))' "$BASE/\$metadata" \
  || { echo "CAP server does not answer $BASE/\$metadata; log $LOG" >&2; tail -20 "$LOG" >&2; stop_one "$NAME"; exit 1; }
log "$NAME ready in $(( ($(date +%s%N) - t0) / 1000000 )) ms: $ROWS rows, page size $PAGE, reliable paging $RELIABLE"
echo "CAP_NAME=$NAME"
echo "CAP_PID=$pid"
echo "CAP_PORT=$port"
echo "CAP_BASE_URL=$BASE"
echo "CAP_LOG=$LOG"
