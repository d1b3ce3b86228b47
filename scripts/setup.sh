#!/usr/bin/env bash
# setup.sh — install everything imgstore needs to run and be tested; idempotent,
# and fast (about a second) when everything is already there. `setup.sh --packages`
# does step 1 only.
#
#   1. Debian packages: Ceph (mon, osd, mgr, CLI, python3-rados/rbd), openssh-server,
#      sshpass, qemu-utils, uuid-runtime, curl, chromium + chromium-driver for the
#      console's browser tests, wrk for scripts/bench_api.py (via scripts/devcluster.sh install;
#      `apt-get update` runs once, and only when something is missing).
#   2. .venv in the checkout on CPython 3.11 (pyenv `python3.11` first, else any
#      CPython 3.11 found), with `pip install -e '.[test]'` (re-run when
#      pyproject.toml changes).
#   3. Ceph bindings: .ceph-bindings/ holds symlinks to Debian's rados/rbd .so
#      files, and a .pth in the venv's purelib points at it (no other Debian
#      package leaks into the venv).
#   4. Checks that `.venv/bin/python -c 'import rados, rbd, imgstore'` works.
set -euo pipefail
umask 022

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
VENV=$ROOT/.venv
BINDINGS=$ROOT/.ceph-bindings
DIST=/usr/lib/python3/dist-packages
SO_FILES="rados.cpython-311-x86_64-linux-gnu.so rbd.cpython-311-x86_64-linux-gnu.so"
T0=$EPOCHREALTIME
log() { printf '[setup +%ss] %s\n' "$(awk -v a="$T0" -v b="$EPOCHREALTIME" 'BEGIN{printf "%.1f", b-a}')" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# ---------------------------------------------------------------- 1. Debian packages
# chromium + chromium-driver: the headless browser of the console tests (tests/e2e);
# wrk: the C client scripts/bench_api.py measures the server with (Python clients cap it)
DEVCLUSTER_EXTRA_PACKAGES="curl ca-certificates chromium chromium-driver wrk" bash "$ROOT/scripts/devcluster.sh" install 2>&1 | sed 's/^/[setup] /' >&2
# --packages: this step only (scripts/test.sh starts the clusters while the venv is made)
if [ "${1:-}" = --packages ]; then exit 0; fi

# ---------------------------------------------------------------- 2. venv
is_py311() { [ -x "$1" ] && "$1" -c 'import sys, venv; sys.exit(sys.version_info[:2] != (3, 11) or sys.implementation.name != "cpython")' 2>/dev/null; }
find_python() {
  local c
  local pyenv_root=${PYENV_ROOT:-${HOME:-/root}/.pyenv}
  # pyenv's CPython 3.11 first (newest patch release), then any other CPython 3.11
  for c in $(ls -d "$pyenv_root"/versions/3.11*/bin/python3.11 /root/.pyenv/versions/3.11*/bin/python3.11 2>/dev/null | sort -Vr) \
           "$(command -v python3.11 2>/dev/null || true)" \
           /usr/local/bin/python3.11 /usr/bin/python3.11 \
           "$(command -v python3 2>/dev/null || true)"; do
    [ -n "$c" ] && is_py311 "$c" && { "$c" -c 'import sys; print(sys.executable)'; return 0; }
  done
  return 1
}

if ! is_py311 "$VENV/bin/python"; then
  PY=$(find_python) || die "no CPython 3.11 found (tried pyenv python3.11, /usr/local/bin, /usr/bin); the Debian ceph bindings need 3.11"
  log "creating $VENV with $PY ($("$PY" -V 2>&1))"
  rm -rf "$VENV"
  "$PY" -m venv "$VENV"
fi
PURELIB=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')

STAMP=$VENV/.imgstore-setup-stamp
WANT_STAMP=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ "$(cat "$STAMP" 2>/dev/null)" != "$WANT_STAMP" ] || ! "$VENV/bin/python" -c 'import imgstore, pytest' 2>/dev/null; then
  log "pip install -e '.[test]'"
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check -e '.[test]'
  echo "$WANT_STAMP" > "$STAMP"
fi

# ---------------------------------------------------------------- 3. ceph bindings
mkdir -p "$BINDINGS"
for so in $SO_FILES; do
  [ -e "$DIST/$so" ] || die "$DIST/$so missing (python3-rados / python3-rbd not installed?)"
  [ "$(readlink "$BINDINGS/$so" 2>/dev/null)" = "$DIST/$so" ] || ln -sfn "$DIST/$so" "$BINDINGS/$so"
done
[ "$(cat "$PURELIB/ceph-bindings.pth" 2>/dev/null)" = "$BINDINGS" ] || echo "$BINDINGS" > "$PURELIB/ceph-bindings.pth"

# ---------------------------------------------------------------- 4. check
"$VENV/bin/python" -c 'import rados, rbd, imgstore' || die "import rados, rbd, imgstore failed in $VENV"
log "ready: $VENV ($("$VENV/bin/python" -V 2>&1)), import rados, rbd, imgstore ok"
