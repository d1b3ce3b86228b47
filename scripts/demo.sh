#!/usr/bin/env bash
# demo.sh — the README's demo: a real Ceph cluster, the imgstore server, and the
# seed's request (AddCephBackupStorage) sent with curl exactly like its example.
#
#   bash scripts/demo.sh          # set up, start cluster `demo` + server, add the storage
#   bash scripts/demo.sh stop     # stop the server and the demo cluster (data kept)
#
# Cluster `demo`: mon 127.0.0.1:20789, ssh 127.0.0.1:20022 (scripts/devcluster.sh),
# pool `imgs`. Server: http://127.0.0.1:8080, data and server.log in data/demo/,
# admin password `password`. Everything listens on 127.0.0.1 only.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
DEVCLUSTER=$ROOT/scripts/devcluster.sh
CLUSTER=demo
MON_PORT=20789
SSH_PORT=20022
POOL=imgs
PORT=8080
BASE=http://127.0.0.1:$PORT/zstack/v1
DATA=$ROOT/data/demo
PIDFILE=$DATA/server.pid
SERVER_LOG=$DATA/server.log
ADMIN_PASSWORD=password
PY=$ROOT/.venv/bin/python

say() { printf '\n==> %s\n' "$*" >&2; }
die() { printf 'demo.sh: ERROR: %s\n' "$*" >&2; exit 1; }

# pid of our server if it is running (pid file + the command line says so)
server_pid() {
  local pid
  pid=$(cat "$PIDFILE" 2>/dev/null) || return 1
  [[ "$pid" =~ ^[0-9]+$ ]] && [ -d "/proc/$pid" ] || return 1
  tr '\0' ' ' < "/proc/$pid/cmdline" 2>/dev/null | grep -Eq 'imgstore( serve|\.server)' || return 1
  echo "$pid"
}

stop_server() {
  local pid
  if pid=$(server_pid); then
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 100); do [ -d "/proc/$pid" ] || break; sleep 0.1; done
    [ -d "/proc/$pid" ] && kill -KILL "$pid" 2>/dev/null || true
    echo "stopped the imgstore server (pid $pid)" >&2
  fi
  rm -f "$PIDFILE"
}

if [ "${1:-}" = stop ]; then
  stop_server
  bash "$DEVCLUSTER" stop "$CLUSTER"
  exit 0
fi
[ $# -eq 0 ] || die "usage: $0 [stop]"

# ---------------------------------------------------------------- setup + cluster
say "setup (packages, .venv, ceph bindings)"
bash "$ROOT/scripts/setup.sh"

say "dev Ceph cluster '$CLUSTER' (mon 127.0.0.1:$MON_PORT, ssh 127.0.0.1:$SSH_PORT)"
bash "$DEVCLUSTER" start "$CLUSTER" -p "$MON_PORT" -s "$SSH_PORT"
# read the cluster's details without exporting CEPH_* into this shell (the server inherits it)
cluster_var() { bash -c 'eval "$("$1" env "$2")" && printf %s "${!3}"' _ "$DEVCLUSTER" "$CLUSTER" "$1"; }
CEPH_CONF_DEMO=$(cluster_var CEPH_CONF)
MON_URL=$(cluster_var MON_URL)
if ! ceph -c "$CEPH_CONF_DEMO" --connect-timeout 10 osd pool ls | grep -qx "$POOL"; then
  ceph -c "$CEPH_CONF_DEMO" --connect-timeout 10 osd pool create "$POOL" 8 >/dev/null 2>&1
  rbd -c "$CEPH_CONF_DEMO" pool init "$POOL"     # also enables the 'rbd' application
  echo "created pool $POOL" >&2
fi

# ---------------------------------------------------------------- server
say "imgstore server on http://127.0.0.1:$PORT (log: $SERVER_LOG)"
mkdir -p "$DATA"
stop_server   # a server from an earlier run: restart it, so it runs the current code
if (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; then
  die "127.0.0.1:$PORT is already in use by another process"
fi
[ -x "$ROOT/.venv/bin/imgstore" ] || die ".venv/bin/imgstore is missing (setup.sh should have installed it)"
IMGSTORE_DATA_DIR=$DATA IMGSTORE_ADMIN_PASSWORD=$ADMIN_PASSWORD \
  setsid "$ROOT/.venv/bin/imgstore" serve --host 127.0.0.1 --port "$PORT" \
  </dev/null >>"$SERVER_LOG" 2>&1 &
echo $! > "$PIDFILE"
for i in $(seq 1 120); do
  code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "$BASE/backup-storage" || true)
  [ "$code" != 000 ] && break
  server_pid >/dev/null || { tail -30 "$SERVER_LOG" >&2; die "the server exited at start; see $SERVER_LOG"; }
  sleep 0.5
done
[ "$code" != 000 ] || { tail -30 "$SERVER_LOG" >&2; die "the server does not answer after 60 s; see $SERVER_LOG"; }
echo "server answers (pid $(cat "$PIDFILE"))" >&2

# ---------------------------------------------------------------- login
json_get() { # python expression on `d` (the JSON read from stdin)
  "$PY" -c 'import json, sys; d = json.load(sys.stdin); r = eval(sys.argv[1]); print("\n".join(r) if isinstance(r, list) else r)' "$1"
}
say "login as admin: PUT $BASE/accounts/login"
PW_HASH=$(printf %s "$ADMIN_PASSWORD" | sha512sum | cut -d' ' -f1)
LOGIN=$(curl -sS -X PUT "$BASE/accounts/login" -H 'Content-Type: application/json;charset=UTF-8' \
  -d "{\"logInByAccount\":{\"accountName\":\"admin\",\"password\":\"$PW_HASH\"}}")
SESSION=$(printf %s "$LOGIN" | json_get 'd["inventory"]["uuid"]' 2>/dev/null) ||
  die "login failed: $LOGIN"
echo "session $SESSION" >&2

# ---------------------------------------------------------------- remove a storage left by an earlier run
OLD=$(curl -sS "$BASE/backup-storage?q=name=demo-ceph" -H "Authorization: OAuth $SESSION")
for uuid in $(printf %s "$OLD" | json_get '[i["uuid"] for i in d.get("inventories", [])]' 2>/dev/null || true); do
  say "deleting demo-ceph from an earlier run: DELETE $BASE/backup-storage/$uuid"
  curl -sS -X DELETE "$BASE/backup-storage/$uuid" -H "Authorization: OAuth $SESSION" >/dev/null
done

# ---------------------------------------------------------------- the seed's request
say "AddCephBackupStorage: POST $BASE/backup-storage/ceph  (monUrl $MON_URL)"
REPLY=$(curl -sS -X POST "http://127.0.0.1:$PORT/zstack/v1/backup-storage/ceph" \
  -H "Authorization: OAuth $SESSION" \
  -H 'Content-Type: application/json;charset=UTF-8' \
  -d "{\"params\":{\"monUrls\":[\"$MON_URL\"],\"poolName\":\"$POOL\",\"url\":\"not used\",\"name\":\"demo-ceph\",\"description\":\"imgstore demo\",\"type\":\"Ceph\",\"importImages\":false},\"systemTags\":[],\"userTags\":[]}")
printf %s "$REPLY" | "$PY" -m json.tool 2>/dev/null || printf '%s\n' "$REPLY"

cat >&2 <<EOF

The server is still running (pid $(cat "$PIDFILE")) on http://127.0.0.1:$PORT, log $SERVER_LOG.
Try:  curl -s 'http://127.0.0.1:$PORT/zstack/v1/backup-storage' -H 'Authorization: OAuth $SESSION' | $PY -m json.tool
Stop the server and the demo cluster:  bash scripts/demo.sh stop
EOF
