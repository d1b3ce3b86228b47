#!/usr/bin/env bash
# test.sh — the project's test command: `bash scripts/test.sh [pytest args...]`
#
#   1. scripts/setup.sh (packages, .venv, ceph bindings)
#   2. PostgreSQL on 127.0.0.1:5432 answers (started with pg_ctlcluster if down)
#   3. dev Ceph clusters c1 (mon 16789, ssh 16022) and c2 (mon 26789, ssh 26022),
#      started in parallel by scripts/devcluster.sh (a running cluster is reused)
#   4. IMGSTORE_TEST_CLUSTERS=c1,c2 and IMGSTORE_DEV_DIR exported, then
#      `.venv/bin/python -m pytest -q "$@"`: every test server on its own SQLite file
#   5. the PostgreSQL pass: the integration tests again with IMGSTORE_TEST_DB=postgresql,
#      every test server on a fresh PostgreSQL database of its own (tests/conftest.py).
#      IMGSTORE_TEST_PG_PASS=auto (default) runs it when no pytest args were given;
#      1 runs it with the same args as step 4; 0 never. It leaves out the modules that
#      never start a server (test_ceph_layer, test_rbd_io) and test_multinode, which is
#      on PostgreSQL in both passes.
#   Exits non-zero when either pass fails (5 = "no tests collected" is a failure too).
#
# Clusters are left running for the next run; IMGSTORE_TEST_TEARDOWN=1 purges them
# at the end. Tests get a cluster's details with `scripts/devcluster.sh env c1`.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
DEVCLUSTER=$ROOT/scripts/devcluster.sh
export IMGSTORE_DEV_DIR=${IMGSTORE_DEV_DIR:-/tmp/imgstore-dev}
T0=$EPOCHREALTIME
log() { printf '[test.sh +%ss] %s\n' "$(awk -v a="$T0" -v b="$EPOCHREALTIME" 'BEGIN{printf "%.1f", b-a}')" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# ---------------------------------------------------------------- 1. setup
bash "$ROOT/scripts/setup.sh"

# ---------------------------------------------------------------- 2. PostgreSQL
pg_up() { "$ROOT/.venv/bin/python" - <<'EOF' 2>/dev/null
import socket, sys
s = socket.create_connection(("127.0.0.1", 5432), timeout=2)
s.sendall(b"\x00\x00\x00\x08\x04\xd2\x16\x2f")   # SSLRequest: a live server answers 'S' or 'N'
sys.exit(0 if s.recv(1) in (b"S", b"N") else 1)
EOF
}
if ! pg_up; then
  log "PostgreSQL on 127.0.0.1:5432 does not answer; starting it"
  ver=$(ls /etc/postgresql 2>/dev/null | sort -V | tail -1)
  [ -n "$ver" ] || die "PostgreSQL is not installed (/etc/postgresql is empty)"
  pg_ctlcluster --skip-systemctl-redirect "$ver" main start </dev/null || true
  for _ in $(seq 1 60); do pg_up && break; sleep 0.5; done
  pg_up || die "PostgreSQL on 127.0.0.1:5432 still does not answer"
fi
log "PostgreSQL answers on 127.0.0.1:5432"

# ---------------------------------------------------------------- 3. Ceph clusters
start_cluster() { # NAME MONPORT SSHPORT
  bash "$DEVCLUSTER" start "$1" -p "$2" -s "$3" 2>&1 | sed -u "s/^/[$1] /" >&2
}
start_cluster c1 16789 16022 & p1=$!
start_cluster c2 26789 26022 & p2=$!
rc1=0; rc2=0
wait "$p1" || rc1=$?
wait "$p2" || rc2=$?
if [ "$rc1" != 0 ] || [ "$rc2" != 0 ]; then
  for c in c1 c2; do bash "$DEVCLUSTER" status "$c" >&2 || true; done
  die "could not start the dev Ceph clusters (c1 rc=$rc1, c2 rc=$rc2); logs in $IMGSTORE_DEV_DIR/<name>/log"
fi
export IMGSTORE_TEST_CLUSTERS=c1,c2

if [ "${IMGSTORE_TEST_TEARDOWN:-0}" = 1 ]; then
  trap 'log "IMGSTORE_TEST_TEARDOWN=1: purging c1 and c2"; bash "$DEVCLUSTER" purge c1 || true; bash "$DEVCLUSTER" purge c2 || true' EXIT
fi

# ---------------------------------------------------------------- 4. pytest (SQLite)
run_pytest() { # LABEL ARGS...
  local label=$1 rc=0; shift
  log "running pytest on $label (IMGSTORE_TEST_CLUSTERS=$IMGSTORE_TEST_CLUSTERS IMGSTORE_DEV_DIR=$IMGSTORE_DEV_DIR)"
  "$ROOT/.venv/bin/python" -m pytest -q --durations=20 "$@" </dev/null || rc=$?
  if [ "$rc" = 5 ]; then
    log "FAILURE: pytest collected no tests (exit 5); a test run that runs nothing is not a pass"
  fi
  log "pytest on $label: exit code $rc"
  return "$rc"
}
rc=0
IMGSTORE_TEST_DB=sqlite run_pytest SQLite "$@" || rc=$?

# ---------------------------------------------------------------- 5. pytest (PostgreSQL)
pg_pass=${IMGSTORE_TEST_PG_PASS:-auto}
if [ "$pg_pass" = auto ]; then
  pg_pass=$([ $# = 0 ] && echo 1 || echo 0)
fi
if [ "$pg_pass" = 1 ]; then
  if [ $# = 0 ]; then
    set -- tests/integration --ignore=tests/integration/test_ceph_layer.py \
      --ignore=tests/integration/test_rbd_io.py --ignore=tests/integration/test_multinode.py
  fi
  rc_pg=0
  IMGSTORE_TEST_DB=postgresql run_pytest PostgreSQL "$@" || rc_pg=$?
  [ "$rc" != 0 ] || rc=$rc_pg
fi
log "exit code $rc"
exit "$rc"
