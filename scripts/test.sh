#!/usr/bin/env bash
# test.sh — the project's test command: `bash scripts/test.sh [pytest args...]`
#
#   1. scripts/setup.sh --packages (the Debian packages), then
#   2. the dev Ceph clusters start in parallel, in the background, by scripts/devcluster.sh
#      (a running cluster is reused) while scripts/setup.sh makes .venv: c1 (mon 16789,
#      ssh 16022), shared by every worker (no test stops its daemons), and one "c2" per
#      worker, the cluster fault tests stop daemons of: c2 (mon 26789, ssh 26022), then c3,
#      c4, ... (cN: mon 10789+1000*(N-2), ssh mon-767).
#   3. PostgreSQL on 127.0.0.1:5432 answers (started with pg_ctlcluster if down), and the
#      clusters are ready
#   4. the SQLite pass: `.venv/bin/python -m pytest -q "$@"`, every test server on its own
#      SQLite file
#   5. the PostgreSQL pass, AT THE SAME TIME as step 4: the integration tests again with
#      IMGSTORE_TEST_DB=postgresql, every test server on a fresh PostgreSQL database of its
#      own (tests/conftest.py). IMGSTORE_TEST_PG_PASS=auto (default) runs it when no pytest
#      args were given; 1 runs it with the same args as step 4; 0 never. It leaves out the
#      modules that never start a server (test_ceph_layer, test_rbd_io) and test_multinode,
#      which is on PostgreSQL in both passes.
#   Each pass runs on IMGSTORE_TEST_WORKERS pytest-xdist workers (default 3 without pytest
#   args, 5 for --quick without args, 1 = no xdist with args; the SQLite pass two more
#   beside the PostgreSQL pass, IMGSTORE_TEST_SQLITE_WORKERS), `--dist loadscope
#   --no-loadscope-reorder`: a worker takes a module (or a test class) at a time, long ones
#   first (tests/conftest.py orders them); worker gwN of a pass uses the lane
#   N of IMGSTORE_TEST_CLUSTERS (`c1,c2;c1,c3`: tests/conftest.py). A pass's output goes to
#   a file and is printed whole when the pass ends; the log ends with both passes' summaries.
#   Exits non-zero when either pass fails (5 = "no tests collected" is a failure too).
#
#   `scripts/test.sh --quick`: the inner loop; CI runs everything. No clusters start: the
#   tests that need a storage run against the fake behind the `imgstore.ceph` facade
#   (tests/fakeceph), on SQLite, in parallel; those that need the real clusters
#   (`real_ceph`), a browser or fuzzing are left out.
#
# Clusters are left running for the next run; IMGSTORE_TEST_TEARDOWN=1 purges them
# at the end. Tests get a cluster's details with `scripts/devcluster.sh env c1`.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
DEVCLUSTER=$ROOT/scripts/devcluster.sh
export IMGSTORE_DEV_DIR=${IMGSTORE_DEV_DIR:-/tmp/imgstore-dev}
# Python keeps compiled modules (__pycache__, git-ignored) for this run's hundreds of
# interpreters: with PYTHONDONTWRITEBYTECODE every pytest worker compiled imgstore and
# rewrote the test modules' asserts again (collection 7.3 -> 2.6 s of CPU with them kept)
unset PYTHONDONTWRITEBYTECODE
T0=$EPOCHREALTIME
log() { printf '[test.sh +%ss] %s\n' "$(awk -v a="$T0" -v b="$EPOCHREALTIME" 'BEGIN{printf "%.1f", b-a}')" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# ---------------------------------------------------------------- 1. what runs where
QUICK=0
if [ "${1:-}" = --quick ]; then QUICK=1; shift; fi
pg_pass=${IMGSTORE_TEST_PG_PASS:-auto}
if [ "$pg_pass" = auto ]; then
  pg_pass=$([ $# = 0 ] && [ "$QUICK" = 0 ] && echo 1 || echo 0)
fi
# --quick: 5 (its tests mostly wait on servers and sources: more workers than cores)
workers=${IMGSTORE_TEST_WORKERS:-$([ $# != 0 ] && echo 1 || { [ "$QUICK" = 1 ] && echo 5 || echo 3; })}
[ "$workers" -ge 1 ] 2>/dev/null || die "IMGSTORE_TEST_WORKERS must be a number >= 1"
# The SQLite pass holds every test and the fuzzing, the PostgreSQL pass the integration
# tests: about twice the work, much of it waiting (restarts, pings, timeouts). With both
# passes it gets two workers more, so the two end nearer each other. More workers than
# cores: with 3 + 2 the CPU sat 60-90 % busy through the second half of the run (tests
# waiting on restarts and Ceph held every worker): 745 s; 4 + 3: 666 s (2026-12-04); on
# the sixth session's machine 4 + 3 took 707 s (the SQLite pass 598 s, its last 170 s
# alone), 5 + 3 626 s (SQLite 545, PostgreSQL 446).
sqlite_workers=${IMGSTORE_TEST_SQLITE_WORKERS:-$([ "$pg_pass" = 1 ] && echo $((workers + 2)) || echo "$workers")}
[ "$sqlite_workers" -ge 1 ] 2>/dev/null || die "IMGSTORE_TEST_SQLITE_WORKERS must be a number >= 1"

ports() { # NAME -> "MONPORT SSHPORT"
  case "$1" in
    c1) echo "16789 16022" ;;
    c2) echo "26789 26022" ;;
    *) local n=${1#c} mon; mon=$((10789 + 1000 * (n - 2))); echo "$mon $((mon - 767))" ;;
  esac
}
# lanes: "c1,c2;c1,c3" for the SQLite pass, the next c's for the PostgreSQL pass
# IMGSTORE_TEST_CLUSTER_NAMES (default "c1 c2 c3 ..."): the shared cluster, then the
# workers' own; another set lets a second test.sh run beside this one on the same machine.
# No c8: its ports (16789, 16022) are c1's.
read -r -a names_pool <<<"${IMGSTORE_TEST_CLUSTER_NAMES:-c1 c2 c3 c4 c5 c6 c7 c9 c10 c11}"
next_c=1; CLUSTERS=${names_pool[0]}
lanes() { # WORKERS -> lanes, and the clusters they need added to CLUSTERS
  local i out="" c
  for ((i = 0; i < $1; i++)); do
    c=${names_pool[$next_c]:-}; [ -n "$c" ] || die "IMGSTORE_TEST_CLUSTER_NAMES has too few names"
    out+="${out:+;}${names_pool[0]},$c"; CLUSTERS+=" $c"; next_c=$((next_c + 1))
  done
  LANES=$out
}
lanes "$sqlite_workers"; SQLITE_LANES=$LANES
PG_LANES=""
if [ "$pg_pass" = 1 ]; then lanes "$workers"; PG_LANES=$LANES; fi
[ "$workers" -le 5 ] && [ "$sqlite_workers" -le 5 ] || die "at most 5 workers per pass: each takes 1000 ports"

if [ "$QUICK" = 1 ]; then
  CLUSTERS=""
  log "--quick: no clusters (a fake Ceph behind the imgstore.ceph facade); real_ceph, fuzz and serial tests are deselected"
fi
# ---------------------------------------------------------------- 2. packages, then the clusters start
# while the venv is made (they need only the Debian packages)
bash "$ROOT/scripts/setup.sh" --packages
start_cluster() { # NAME
  local p; p=$(ports "$1")
  bash "$DEVCLUSTER" start "$1" -p "${p% *}" -s "${p#* }" 2>&1 | sed -u "s/^/[$1] /" >&2
}
pids=(); names=()
for c in $CLUSTERS; do start_cluster "$c" & pids+=($!); names+=("$c"); done
bash "$ROOT/scripts/setup.sh"

# ---------------------------------------------------------------- 3. PostgreSQL, and the clusters ready
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

failed=""
for i in "${!pids[@]}"; do wait "${pids[$i]}" || failed+=" ${names[$i]}"; done
if [ -n "$failed" ]; then
  for c in $failed; do bash "$DEVCLUSTER" status "$c" >&2 || true; done
  die "could not start the dev Ceph clusters:$failed; logs in $IMGSTORE_DEV_DIR/<name>/log"
fi
[ -z "$CLUSTERS" ] || log "clusters ready:$(printf ' %s' $CLUSTERS)"

if [ "${IMGSTORE_TEST_TEARDOWN:-0}" = 1 ] && [ -n "$CLUSTERS" ]; then
  trap 'log "IMGSTORE_TEST_TEARDOWN=1: purging $CLUSTERS"; for c in $CLUSTERS; do bash "$DEVCLUSTER" purge "$c" || true; done' EXIT
fi

# ---------------------------------------------------------------- 4./5. pytest, both passes at once
"$ROOT/.venv/bin/lint-imports" --no-cache --no-logo >&2 || die "lint-imports: an import breaks the layers or makes a cycle ([tool.importlinter] in pyproject.toml)"
"$ROOT/.venv/bin/ruff" check --no-cache imgstore tests scripts >&2 || die "ruff: lint or import order ([tool.ruff] in pyproject.toml)"
OUT=$(mktemp -d "${TMPDIR:-/tmp}/imgstore-test.XXXXXX")
# mypy --strict ([tool.mypy] in pyproject.toml) beside the tests: 13-60 s of one core from
# scratch; --quick reuses .mypy_cache (under a second when little changed)
mypy_args=(--no-incremental); [ "$QUICK" = 0 ] || mypy_args=()
( "$ROOT/.venv/bin/mypy" "${mypy_args[@]}" >"$OUT/mypy.log" 2>&1; echo $? >"$OUT/mypy.rc" ) &
mypy_pid=$!
run_pytest() { # LABEL DB LANES WORKERS ARGS... : output to $OUT/LABEL.log, printed when it ends
  local label=$1 db=$2 clusters=$3 n=$4 rc=0 xdist=(); shift 4
  # the test servers' ports: SQLite from 21000, PostgreSQL from 27000, 1000 per worker
  # (tests/conftest.py free_port; 26022 and 26789.. are c2's)
  local bases=${IMGSTORE_TEST_PORT_BASES:-21000 27000}
  local port_base=$([ "$db" = postgresql ] && echo "${bases#* }" || echo "${bases% *}")
  [ "$n" = 1 ] || xdist=(-n "$n" --dist loadscope --no-loadscope-reorder)
  log "pytest on $label started ($([ "$n" = 1 ] && echo "1 process" || echo "$n workers"), IMGSTORE_TEST_CLUSTERS='$clusters'; output printed when it ends)"
  IMGSTORE_TEST_DB=$db IMGSTORE_TEST_CLUSTERS=$clusters IMGSTORE_TEST_PORT_BASE=$port_base \
    IMGSTORE_TEST_SERIAL_LIST=$OUT/$label.serial \
    "$ROOT/.venv/bin/python" -m pytest -q -p no:cacheprovider --durations=20 "${xdist[@]}" "$@" \
    </dev/null >"$OUT/$label.log" 2>&1 || rc=$?
  echo "$rc" >"$OUT/$label.rc"
  {
    flock 9
    log "pytest on $label ended (exit code $rc); its output:"
    sed "s/^/[$label] /" "$OUT/$label.log"
  } 9>"$OUT/print.lock" >&2
  return "$rc"
}
pg_args=("$@")
if [ $# = 0 ]; then
  pg_args=(tests/integration --ignore=tests/integration/ceph/test_ceph_layer.py
           --ignore=tests/integration/ceph/test_rbd_io.py --ignore=tests/integration/services/node/test_multinode.py)
fi
# Without pytest args, the tests marked `serial` (timing-sensitive: throttle windows, latency
# ratios) run after the parallel lanes, alone on the machine, one process per pass.
split=$([ $# = 0 ] && [ "$QUICK" = 0 ] && echo 1 || echo 0)
parallel_m=(); [ "$split" = 0 ] || parallel_m=(-m "not serial")
runs=(SQLite)
if [ "$QUICK" = 1 ]; then
  # without args no fuzz module is collected: the fuzzing's pytest plugins stay unloaded
  # (~2 s of CPU per pytest process)
  [ $# -gt 0 ] || set -- -p no:schemathesis -p no:hypothesispytest tests/unit tests/integration tests/security
  # the fake's clusters live in $OUT (tests/fakeceph); no dev dir, even where clusters run
  mkdir "$OUT/fake-ceph"
  IMGSTORE_TEST_FAKE_CEPH=$OUT/fake-ceph IMGSTORE_DEV_DIR=$OUT/no-clusters \
    run_pytest SQLite sqlite "" "$workers" -m "not real_ceph and not fuzz and not serial" "$@" &
else
  run_pytest SQLite sqlite "$SQLITE_LANES" "$sqlite_workers" "${parallel_m[@]}" "$@" &
fi
p_sqlite=$!
if [ "$pg_pass" = 1 ]; then
  runs+=(PostgreSQL)
  run_pytest PostgreSQL postgresql "$PG_LANES" "$workers" "${parallel_m[@]}" "${pg_args[@]}" &
  p_pg=$!
fi
progress() { # a line a minute while the passes run, so a waiting CI log is not silent
  local label line pct
  while sleep 60 >/dev/null 2>&1 </dev/null; do
    line=""
    for label in "${runs[@]}"; do
      pct=$(grep -o '\[ *[0-9]*%\]' "$OUT/$label.log" 2>/dev/null | tail -1 | tr -d '[] ' || true)
      line+=" $label ${pct:-0%},"
    done
    log "running:${line%,}"
  done
}
progress & p_progress=$!
[ -z "${p_pg:-}" ] || wait "$p_pg" || true
wait "$p_sqlite" || true
kill "$p_progress" 2>/dev/null || true
serial_files() { # LABEL -> the files of the serial tests its lanes collected (tests/conftest.py)
  if [ -f "$OUT/$1.serial" ]; then cat "$OUT/$1.serial"; else printf '%s\n' "${@:2}"; fi
}
if [ "$split" = 1 ]; then
  mapfile -t files < <(serial_files SQLite tests)
  if [ "${#files[@]}" -gt 0 ]; then
    run_pytest SQLite-serial sqlite "${names_pool[0]},${names_pool[1]}" 1 -m serial "${files[@]}" || true
    runs+=(SQLite-serial)
  fi
  mapfile -t files < <(serial_files PostgreSQL "${pg_args[@]}")
  if [ "$pg_pass" = 1 ] && [ "${#files[@]}" -gt 0 ]; then
    run_pytest PostgreSQL-serial postgresql "${names_pool[0]},${names_pool[1]}" 1 -m serial "${files[@]}" || true
    runs+=(PostgreSQL-serial)
  fi
fi

rc=0
wait "$mypy_pid" || true
if [ "$(cat "$OUT/mypy.rc" 2>/dev/null || echo 1)" != 0 ]; then
  cat "$OUT/mypy.log" >&2; log "FAILURE: mypy --strict"; rc=1
else
  log "mypy: $(tail -1 "$OUT/mypy.log")"
fi
for label in "${runs[@]}"; do
  prc=$(cat "$OUT/$label.rc" 2>/dev/null || echo 1)
  if [ "$prc" = 5 ] && [[ "$label" = *-serial ]]; then
    prc=0  # nothing marked serial in this pass's paths
  elif [ "$prc" = 5 ]; then
    log "FAILURE: pytest on $label collected no tests (exit 5); a test run that runs nothing is not a pass"
  fi
  log "pytest on $label: exit code $prc: $(grep -E ' in [0-9.]+s( \(|$| =)' "$OUT/$label.log" | tail -1 | tr -d '=' | xargs)"
  [ "$rc" != 0 ] || rc=$prc
done
rm -rf "$OUT"
log "exit code $rc"
exit "$rc"
