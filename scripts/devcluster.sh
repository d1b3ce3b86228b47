#!/usr/bin/env bash
# devcluster.sh — named single-node Ceph dev clusters (1 mon, 1 mgr, 1 BlueStore
# OSD on a sparse file), each with its own sshd, all on 127.0.0.1 only.
# Debian bookworm packages (Ceph 16.2 "pacific"); no systemd, cephadm or docker.
#
# Usage:
#   devcluster.sh install                      # apt-get install what is needed (idempotent)
#   devcluster.sh start NAME [-p MONPORT] [-s SSHPORT] [--fresh]
#   devcluster.sh stop NAME [--purge]          # graceful, keeps the data
#   devcluster.sh purge NAME                   # SIGKILL this cluster's daemons, rm -rf its dir
#   devcluster.sh status NAME                  # exit 0 = all daemons alive and the mon answers
#   devcluster.sh env NAME                     # export lines; use: eval "$(devcluster.sh env NAME)"
#   devcluster.sh daemon-stop  mon|mgr|osd|sshd NAME    # for fault tests
#   devcluster.sh daemon-start mon|mgr|osd|sshd NAME    # returns when quorum / up / available / listening
#
# Layout: ${IMGSTORE_DEV_DIR:-/tmp/imgstore-dev}/NAME holds ceph.conf, the keyrings,
# mon/ mgr/ osd/ data, run/ (pid files, admin sockets), log/, ssh/ (sshd_config,
# host key) and devcluster.params (the ports it was created with; an existing
# cluster keeps them).
#
# Ports: mon v1 MONPORT (default 16789), v2 MONPORT+1, osd/mgr MONPORT+11..+110,
# sshd SSHPORT (default MONPORT-767: 16789 -> 16022). Keep them all < 32768.
#
# SSH: each cluster runs /usr/sbin/sshd on 127.0.0.1:SSHPORT with its own config,
# host key, pid file and log. Login user `imgstore-ceph` (group `imgstore-ceph`,
# created if missing), password ${DEVCLUSTER_SSH_PASSWORD:-imgstore-dev} (set by
# every `start`; the user is shared by all clusters). sshd sets CEPH_CONF for the
# session, and the admin keyring is group-readable by `imgstore-ceph`, so plain
# `ceph ...` and `rbd ...` work over ssh. /etc/ssh is never touched.
#
# Environment:
#   IMGSTORE_DEV_DIR          base dir                     (default /tmp/imgstore-dev)
#   DEVCLUSTER_SSH_PASSWORD   password of imgstore-ceph    (default imgstore-dev)
#   DEVCLUSTER_OSD_SIZE_GB    OSD size for new clusters    (default 10, sparse)
#   DEVCLUSTER_OSD_MEMORY     the OSD's memory for new clusters: small (default: a fixed
#                             128 MiB cache, so ten clusters fit the CI machine) or ceph
#                             (Ceph's defaults: a cache autotuned within 4 GiB; the benches)
#   DEVCLUSTER_START_TIMEOUT  seconds to wait for HEALTH_OK (default 120)
#   DEVCLUSTER_EXTRA_PACKAGES more Debian packages for `install` (one apt-get update for all)
set -euo pipefail
umask 022

SSH_USER=imgstore-ceph
SSH_GROUP=imgstore-ceph
SSH_PASSWORD=${DEVCLUSTER_SSH_PASSWORD:-imgstore-dev}
START_TIMEOUT=${DEVCLUSTER_START_TIMEOUT:-120}
MON_ID=a; MGR_ID=x; OSD_ID=0
APT_PACKAGES="ceph-mon ceph-osd ceph-mgr ceph-common python3-rados python3-rbd openssh-server openssh-client sshpass qemu-utils uuid-runtime iproute2"

usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 2; }

# ---------------------------------------------------------------- arguments
CMD=${1:-}; [ $# -gt 0 ] && shift
DAEMON=""; NAME=""
case "$CMD" in
  daemon-stop|daemon-start) DAEMON=${1:-}; [ $# -gt 0 ] && shift
    case "$DAEMON" in mon|mgr|osd|sshd) ;; *) echo "devcluster: daemon must be mon|mgr|osd|sshd" >&2; exit 2 ;; esac ;;
  install|start|stop|purge|status|env) ;;
  *) usage ;;
esac
OPT_MON_PORT=""; OPT_SSH_PORT=""; FRESH=0; PURGE=0
while [ $# -gt 0 ]; do
  case "$1" in
    -p|--mon-port) OPT_MON_PORT=${2:?}; shift 2 ;;
    -s|--ssh-port) OPT_SSH_PORT=${2:?}; shift 2 ;;
    --fresh) FRESH=1; shift ;;
    --purge) PURGE=1; shift ;;
    -*) echo "devcluster: unknown option $1" >&2; exit 2 ;;
    *) [ -z "$NAME" ] || { echo "devcluster: unexpected argument $1" >&2; exit 2; }; NAME=$1; shift ;;
  esac
done

T0=$EPOCHREALTIME
elapsed() { awk -v a="${1:-$T0}" -v b="$EPOCHREALTIME" 'BEGIN{printf "%.1f", b-a}'; }
log() { printf '[devcluster %s +%ss] %s\n' "${NAME:-}" "$(elapsed)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# ---------------------------------------------------------------- install
do_install() {
  local missing="" p
  for p in $APT_PACKAGES ${DEVCLUSTER_EXTRA_PACKAGES:-}; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing="$missing $p"
  done
  if [ -n "$missing" ]; then
    log "installing:$missing"
    # Never let a package start a system daemon (e.g. sshd on 0.0.0.0:22).
    # The policy is ours only when we wrote it; the trap takes it away again however the
    # install ends (a failed apt-get exits here under set -e), so the machine's packages
    # start their daemons as usual afterwards.
    if [ ! -e /usr/sbin/policy-rc.d ]; then
      trap 'rm -f /usr/sbin/policy-rc.d' EXIT; trap 'exit 130' INT; trap 'exit 143' TERM
      printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; chmod 755 /usr/sbin/policy-rc.d
    fi
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing >/dev/null
  fi
  ceph --version >&2
}
if [ "$CMD" = install ]; then do_install; exit 0; fi

# ---------------------------------------------------------------- cluster paths and parameters
[ -n "$NAME" ] || usage
[[ "$NAME" =~ ^[A-Za-z0-9][A-Za-z0-9_.-]*$ ]] || die "bad cluster name '$NAME'"
BASE=$(realpath -m "${IMGSTORE_DEV_DIR:-/tmp/imgstore-dev}")
DIR=$BASE/$NAME
CONF=$DIR/ceph.conf
PARAMS=$DIR/devcluster.params
ADMIN_KEYRING=$DIR/ceph.client.admin.keyring
RUN=$DIR/run
SSHD_CONFIG=$DIR/ssh/sshd_config
SSHD_PIDFILE=$RUN/sshd.pid
LOCKFILE=$BASE/.$NAME.lock

if [ -f "$PARAMS" ] && [ "$FRESH" = 1 ]; then
  # --fresh: a new cluster, on the old ports unless -p/-s say otherwise
  # shellcheck disable=SC1090
  . "$PARAMS"
  MON_PORT=${OPT_MON_PORT:-$MON_PORT}
  SSH_PORT=${OPT_SSH_PORT:-$( [ -n "$OPT_MON_PORT" ] && echo $((MON_PORT - 767)) || echo "$SSH_PORT")}
  OSD_SIZE_GB=${DEVCLUSTER_OSD_SIZE_GB:-$OSD_SIZE_GB}
  OSD_MEMORY=${DEVCLUSTER_OSD_MEMORY:-${OSD_MEMORY:-small}}
elif [ -f "$PARAMS" ]; then
  # shellcheck disable=SC1090
  . "$PARAMS"
  if [ "$CMD" = start ]; then
    { [ -n "$OPT_MON_PORT" ] && [ "$OPT_MON_PORT" != "$MON_PORT" ]; } &&
      die "$DIR already holds a cluster with mon port $MON_PORT (asked for $OPT_MON_PORT); use --fresh to recreate it"
    { [ -n "$OPT_SSH_PORT" ] && [ "$OPT_SSH_PORT" != "$SSH_PORT" ]; } &&
      die "$DIR already holds a cluster with ssh port $SSH_PORT (asked for $OPT_SSH_PORT); use --fresh to recreate it"
  fi
else
  MON_PORT=${OPT_MON_PORT:-16789}
  SSH_PORT=${OPT_SSH_PORT:-$((MON_PORT - 767))}
  OSD_SIZE_GB=${DEVCLUSTER_OSD_SIZE_GB:-10}
  OSD_MEMORY=${DEVCLUSTER_OSD_MEMORY:-small}
fi
OSD_MEMORY=${OSD_MEMORY:-small}  # a cluster made before the setting
case "$OSD_MEMORY" in small|ceph) ;; *) die "DEVCLUSTER_OSD_MEMORY must be small or ceph, not '$OSD_MEMORY'" ;; esac
MON_V2_PORT=$((MON_PORT + 1))
PORT_MIN=$((MON_PORT + 11))
PORT_MAX=$((MON_PORT + 110))
for _p in "$MON_PORT" "$SSH_PORT"; do
  [[ "$_p" =~ ^[0-9]+$ ]] || die "bad port '$_p'"
done
if [ "$CMD" = start ]; then
  [ "$PORT_MAX" -lt 32768 ] || die "mon port $MON_PORT too high: ports must stay below 32768 (kernel ephemeral range)"
  [ "$SSH_PORT" -ge 1024 ] && [ "$SSH_PORT" -lt 32768 ] || die "ssh port $SSH_PORT must be in 1024..32767"
  [ "$MON_PORT" -ge 1024 ] || die "mon port $MON_PORT must be >= 1024"
  if [ "$SSH_PORT" -ge "$MON_PORT" ] && [ "$SSH_PORT" -le "$PORT_MAX" ]; then die "ssh port $SSH_PORT overlaps the ceph ports $MON_PORT..$PORT_MAX"; fi
fi

ceph_() { ceph -c "$CONF" --connect-timeout 10 "$@"; }
cat_fsid() { sed -n 's/^fsid = //p' "$CONF" 2>/dev/null; }

# Serialise start/stop/purge/daemon-* of one cluster (parallel test runs, parallel
# starts of several clusters are fine). fd 9 is closed for every spawned daemon.
take_lock() {
  mkdir -p "$BASE"
  exec 9>"$LOCKFILE"
  flock -w 600 9 || die "could not lock $LOCKFILE"
}

# ---------------------------------------------------------------- pids
# prints the pid if the pid file names a live daemon of *this* cluster
live_pid() { # mon.a | mgr.x | osd.0 | sshd
  local f pid cmd
  f=$RUN/$1.pid; [ -s "$f" ] || return 1
  pid=$(cat "$f" 2>/dev/null) || return 1
  [[ "$pid" =~ ^[0-9]+$ ]] && [ -d "/proc/$pid" ] || return 1
  cmd=$(tr '\0' ' ' < "/proc/$pid/cmdline" 2>/dev/null) || return 1
  case "$1" in
    sshd) case "$cmd" in *sshd*" -f $SSHD_CONFIG "*) echo "$pid"; return 0 ;; esac ;;
    *)    case "$cmd" in *ceph-*" -c $CONF "*) echo "$pid"; return 0 ;; esac ;;
  esac
  return 1
}
daemon_name() { case "$1" in mon) echo "mon.$MON_ID";; mgr) echo "mgr.$MGR_ID";; osd) echo "osd.$OSD_ID";; sshd) echo sshd;; esac; }

# signal the live ones together, wait <= 10 s, then SIGKILL what is left
signal_and_wait() { # SIG name...
  local sig=$1; shift
  local n pid pids="" i alive=""
  for n in "$@"; do
    if pid=$(live_pid "$n"); then kill "-$sig" "$pid" 2>/dev/null || true; pids="$pids $pid"; log "SIG$sig $n (pid $pid)"; fi
  done
  for i in $(seq 1 100); do
    alive=""
    for pid in $pids; do pid_alive "$pid" && alive="$alive $pid"; done
    [ -z "$alive" ] && break
    sleep 0.1
  done
  for pid in $alive; do log "pid $pid still alive after 10 s, sending SIGKILL"; kill -KILL "$pid" 2>/dev/null || true; done
  [ -n "$alive" ] && sleep 0.3
  for n in "$@"; do rm -f "$RUN/$n.pid"; done
}

# a zombie counts as dead (PID 1 here may reap late)
pid_alive() { [ -d "/proc/$1" ] && ! grep -q '^State:[[:space:]]*Z' "/proc/$1/status" 2>/dev/null; }

port_busy() { ss -Hltn "sport = :$1" 2>/dev/null | grep -q .; }

# ---------------------------------------------------------------- config
write_params() {
  cat > "$PARAMS" <<EOF
# written by devcluster.sh when the cluster was created; an existing cluster keeps these
MON_PORT=$MON_PORT
SSH_PORT=$SSH_PORT
OSD_SIZE_GB=$OSD_SIZE_GB
OSD_MEMORY=$OSD_MEMORY
EOF
}

osd_memory_conf() {
  if [ "$OSD_MEMORY" = ceph ]; then
    echo "osd_memory_target = 4294967296"
    echo "bluestore_cache_autotune = true"
  else
    echo "osd_memory_target = 939524096"
    echo "bluestore_cache_autotune = false"
    echo "bluestore_cache_size = 134217728"
  fi
}

write_conf() {
  local fsid=$1
  cat > "$CONF" <<EOF
# generated by imgstore scripts/devcluster.sh for cluster '$NAME'
[global]
fsid = $fsid
mon_host = [v2:127.0.0.1:$MON_V2_PORT,v1:127.0.0.1:$MON_PORT]
public_addr = 127.0.0.1
cluster_addr = 127.0.0.1
public_network = 127.0.0.0/8
cluster_network = 127.0.0.0/8
ms_bind_ipv4 = true
ms_bind_ipv6 = false
ms_bind_port_min = $PORT_MIN
ms_bind_port_max = $PORT_MAX
auth_cluster_required = cephx
auth_service_required = cephx
auth_client_required = cephx
auth_allow_insecure_global_id_reclaim = false
keyring = $ADMIN_KEYRING
run_dir = $RUN
crash_dir = $DIR/crash
log_to_stderr = false
err_to_stderr = false
osd_pool_default_size = 1
osd_pool_default_min_size = 1
osd_pool_default_pg_num = 8
osd_pool_default_pgp_num = 8
osd_pool_default_pg_autoscale_mode = off
osd_crush_chooseleaf_type = 0
mon_allow_pool_size_one = true
mon_allow_pool_delete = true
mon_warn_on_pool_no_redundancy = false
mon_max_pg_per_osd = 1000
# the host disk may well be >70% full: don't let that turn HEALTH_OK into WARN
mon_data_avail_warn = 2
mon_data_avail_crit = 1
mgr_stats_period = 1
# a killed client's watch on an image it wrote goes after 10 s, not 30: the tests that kill a
# server mid-write wait for exactly that before the image can be removed
osd_client_watch_timeout = 10

# each daemon's own files ([client] below takes them back)
pid_file = $RUN/\$name.pid
admin_socket = $RUN/\$name.asok
log_file = $DIR/log/\$name.log

# Clients (ceph/rbd CLI, librados) may run as any user (e.g. imgstore-ceph over
# ssh): no pid file, no log file, no admin socket, so nothing needs a writable path.
[client]
pid_file =
log_file =
admin_socket =

[mon]
mon_data = $DIR/mon/ceph-\$id
mon_initial_members = $MON_ID
mgr_initial_modules = iostat

[mgr]
mgr_data = $DIR/mgr/ceph-\$id
keyring = $DIR/mgr/ceph-\$id/keyring

[osd]
osd_data = $DIR/osd/ceph-\$id
keyring = $DIR/osd/ceph-\$id/keyring
$(osd_memory_conf)
osd_op_num_shards = 2
osd_op_num_threads_per_shard = 1
osd_objectstore = bluestore
bluestore_block_create = true
bluestore_block_size = $((OSD_SIZE_GB * 1024 * 1024 * 1024))
bluestore_fsck_on_mount = false
bluestore_fsck_on_mkfs = false
EOF
}

# ---------------------------------------------------------------- ssh user + sshd
ensure_ssh_user() {
  # one user for all clusters: serialise against other starts creating it
  exec 8>/tmp/.imgstore-devcluster-user.lock
  flock -w 60 8 || die "could not lock the ssh user setup"
  getent group "$SSH_GROUP" >/dev/null || groupadd "$SSH_GROUP"
  mkdir -p /home
  if ! getent passwd "$SSH_USER" >/dev/null; then
    useradd --create-home --shell /bin/bash --gid "$SSH_GROUP" --comment "imgstore dev cluster ssh user" "$SSH_USER"
    log "created user $SSH_USER"
  fi
  [ "$(getent passwd "$SSH_USER" | cut -d: -f7)" = /bin/bash ] || usermod --shell /bin/bash "$SSH_USER"
  id -nG "$SSH_USER" | tr ' ' '\n' | grep -qx "$SSH_GROUP" || usermod -a -G "$SSH_GROUP" "$SSH_USER"
  echo "$SSH_USER:$SSH_PASSWORD" | chpasswd
  exec 8>&-
}

# the admin keyring is readable by the ssh user's group, not by everyone
share_admin_keyring() {
  chgrp "$SSH_GROUP" "$ADMIN_KEYRING"
  chmod 0640 "$ADMIN_KEYRING"
  runuser -u "$SSH_USER" -- test -r "$ADMIN_KEYRING" -a -r "$CONF" ||
    die "$SSH_USER cannot read $ADMIN_KEYRING / $CONF (is a parent of $DIR not traversable?)"
}

write_sshd_config() {
  mkdir -p "$DIR/ssh"
  [ -s "$DIR/ssh/ssh_host_ed25519_key" ] ||
    ssh-keygen -q -t ed25519 -N '' -C "imgstore-devcluster-$NAME" -f "$DIR/ssh/ssh_host_ed25519_key"
  cat > "$SSHD_CONFIG" <<EOF
# generated by imgstore scripts/devcluster.sh for cluster '$NAME'
ListenAddress 127.0.0.1:$SSH_PORT
AddressFamily inet
HostKey $DIR/ssh/ssh_host_ed25519_key
PidFile $SSHD_PIDFILE
PermitRootLogin no
AllowUsers $SSH_USER
PasswordAuthentication yes
KbdInteractiveAuthentication no
PubkeyAuthentication yes
UsePAM yes
UseDNS no
PrintMotd no
PrintLastLog no
X11Forwarding no
AllowAgentForwarding no
AllowTcpForwarding no
LoginGraceTime 30
MaxStartups 64:30:128
MaxSessions 64
SetEnv CEPH_CONF=$CONF
Subsystem sftp internal-sftp
EOF
}

start_sshd() {
  if live_pid sshd >/dev/null; then return 0; fi
  port_busy "$SSH_PORT" && die "ssh port $SSH_PORT is already in use by another process"
  mkdir -p /run/sshd && chmod 755 /run/sshd
  write_sshd_config
  /usr/sbin/sshd -t -f "$SSHD_CONFIG" || die "sshd -t rejected $SSHD_CONFIG"
  /usr/sbin/sshd -f "$SSHD_CONFIG" -E "$DIR/log/sshd.log" </dev/null >/dev/null 2>>"$DIR/log/sshd.log" 9>&- ||
    die "sshd failed to start, see $DIR/log/sshd.log"
  wait_for "sshd listening on 127.0.0.1:$SSH_PORT" 20 sshd_ok
}
sshd_ok() { live_pid sshd >/dev/null && port_busy "$SSH_PORT"; }

# ---------------------------------------------------------------- ceph bootstrap
bootstrap_mon() {
  local fsid tmp=$DIR/bootstrap
  fsid=$(uuidgen)
  mkdir -p "$DIR"/{run,log,crash,ssh,mon/ceph-$MON_ID,mgr/ceph-$MGR_ID,osd/ceph-$OSD_ID} "$tmp"
  write_params
  write_conf "$fsid"
  {
  ceph-authtool --create-keyring "$tmp/mon.keyring" --gen-key -n mon. --cap mon 'allow *'
  ceph-authtool --create-keyring "$ADMIN_KEYRING" --gen-key -n client.admin \
      --cap mon 'allow *' --cap osd 'allow *' --cap mds 'allow *' --cap mgr 'allow *'
  ceph-authtool --create-keyring "$DIR/mgr/ceph-$MGR_ID/keyring" --gen-key -n "mgr.$MGR_ID" \
      --cap mon 'allow profile mgr' --cap osd 'allow *' --cap mds 'allow *'
  ceph-authtool "$tmp/mon.keyring" --import-keyring "$ADMIN_KEYRING"
  ceph-authtool "$tmp/mon.keyring" --import-keyring "$DIR/mgr/ceph-$MGR_ID/keyring"
  } >/dev/null
  monmaptool --create --fsid "$fsid" \
      --addv "$MON_ID" "[v2:127.0.0.1:$MON_V2_PORT,v1:127.0.0.1:$MON_PORT]" "$tmp/monmap" >/dev/null
  ceph-mon -c "$CONF" --mkfs -i "$MON_ID" --monmap "$tmp/monmap" --keyring "$tmp/mon.keyring" 9>&-
  rm -rf "$tmp"
  log "mon.$MON_ID created (fsid $fsid)"
}

bootstrap_osd() {
  local uuid secret
  uuid=$(uuidgen); secret=$(ceph-authtool --gen-print-key)
  printf '{"cephx_secret": "%s"}' "$secret" > "$DIR/osd/new.json"
  ceph_ osd new "$uuid" "$OSD_ID" -i "$DIR/osd/new.json" >/dev/null
  rm -f "$DIR/osd/new.json"
  printf '[osd.%s]\n\tkey = %s\n' "$OSD_ID" "$secret" > "$DIR/osd/ceph-$OSD_ID/keyring"
  chmod 600 "$DIR/osd/ceph-$OSD_ID/keyring"
  ceph-osd -c "$CONF" -i "$OSD_ID" --mkfs --osd-uuid "$uuid" </dev/null >>"$DIR/log/osd-mkfs.log" 2>&1 9>&- ||
    { tail -20 "$DIR/log/osd-mkfs.log" >&2; die "ceph-osd --mkfs failed"; }
  log "osd.$OSD_ID created (bluestore, ${OSD_SIZE_GB} GiB sparse)"
}

# ceph daemons fork, reopen stdio on /dev/null and write their own pid file;
# the parent returns once the daemon is initialised.
start_ceph_daemon() { # mon|mgr|osd
  local name; name=$(daemon_name "$1")
  if live_pid "$name" >/dev/null; then return 0; fi
  case "$1" in
    mon) port_busy "$MON_PORT" && die "mon port $MON_PORT is already in use by another process"
         ceph-mon -c "$CONF" -i "$MON_ID" </dev/null 9>&- ;;
    mgr) # The mon keeps a dead mgr "available" for mgr_beacon_grace (30 s): mark it
         # failed so that "available" below really means this new mgr.
         ceph -c "$CONF" --connect-timeout 5 mgr fail "$MGR_ID" >/dev/null 2>&1 || true
         ceph-mgr -c "$CONF" -i "$MGR_ID" </dev/null 9>&- ;;
    osd) ceph-osd -c "$CONF" -i "$OSD_ID" </dev/null 9>&- ;;
  esac
  log "spawned $name (pid $(cat "$RUN/$name.pid" 2>/dev/null || echo '?'))"
}

wait_for_quiet() { # timeout, command... : 1 when the command has not succeeded within timeout s
  local t=$1 t1=$EPOCHREALTIME; shift
  until "$@" >/dev/null 2>&1; do
    awk -v a="$t1" -v b="$EPOCHREALTIME" -v t="$t" 'BEGIN{exit !(b-a>t)}' && return 1
    sleep 0.3
  done
}

wait_for() { # description, timeout, command... : wait_for_quiet, logged; a timeout dies
  local what=$1 t=$2 t1=$EPOCHREALTIME; shift 2
  wait_for_quiet "$t" "$@" || die "timeout ($t s) waiting for $what"
  log "$what after $(elapsed "$t1") s"
}

# One `ceph status` call, judged by python: MODE = quorum|osd|mgr|ready|healthy
status_is() {
  ceph -c "$CONF" --connect-timeout 3 status -f json 2>/dev/null | python3 -c '
import json, sys
mode = sys.argv[1]
s = json.load(sys.stdin)
osd = s.get("osdmap", {}); osd = osd.get("osdmap", osd)
pg = s.get("pgmap", {})
ok = {
    "quorum": bool(s.get("quorum_names")),
    "osd": osd.get("num_up_osds") == 1 and osd.get("num_in_osds") == 1,
    "mgr": bool(s.get("mgrmap", {}).get("available")),
    "df": pg.get("bytes_total", 0) > 0,
    "clean": all(st["state_name"] == "active+clean" for st in pg.get("pgs_by_state", [])),
    "health": s.get("health", {}).get("status") == "HEALTH_OK",
}
need = {"quorum": ["quorum"], "osd": ["quorum", "osd"], "mgr": ["quorum", "mgr"],
        "ready": ["quorum", "osd", "mgr", "df", "clean"],
        "healthy": ["quorum", "osd", "mgr", "df", "clean", "health"]}[mode]
sys.exit(0 if all(ok[k] for k in need) else 1)
' "$1"
}

# the OSD itself says it has booted (the mon's osdmap may still show a killed OSD as up)
osd_active() { ceph --admin-daemon "$RUN/osd.$OSD_ID.asok" status 2>/dev/null | grep -q '"state": *"active"'; }
osd_ready() { osd_active && status_is osd; }
cluster_ready() { osd_active && status_is ready; }
cluster_healthy() { osd_active && status_is healthy; }

all_live() {
  local n
  for n in "mon.$MON_ID" "mgr.$MGR_ID" "osd.$OSD_ID" sshd; do live_pid "$n" >/dev/null || return 1; done
}

# ---------------------------------------------------------------- commands
do_start() {
  command -v ceph-mon >/dev/null && [ -x /usr/sbin/sshd ] || die "packages missing (run: $0 install)"
  take_lock
  [ "$FRESH" = 1 ] && purge_locked
  # a cluster whose first start never completed is thrown away and made anew
  if [ -d "$DIR" ] && [ ! -e "$DIR/.bootstrapped" ]; then
    log "$DIR holds an unfinished cluster; recreating it"
    purge_locked
  fi

  if [ -e "$DIR/.bootstrapped" ] && all_live && cluster_ready; then
    ensure_ssh_user
    log "already running (mon 127.0.0.1:$MON_PORT, ssh 127.0.0.1:$SSH_PORT)"
    return 0
  fi

  local t1=$EPOCHREALTIME new=0
  if [ ! -e "$DIR/.bootstrapped" ]; then
    new=1
    for p in "$MON_PORT" "$MON_V2_PORT" "$SSH_PORT"; do port_busy "$p" && die "port $p is already in use"; done
    log "creating cluster in $DIR (mon 127.0.0.1:$MON_PORT/v2 :$MON_V2_PORT, osd/mgr :$PORT_MIN-$PORT_MAX, ssh :$SSH_PORT, osd ${OSD_SIZE_GB} GiB)"
    mkdir -p "$DIR"
    bootstrap_mon
  fi
  ensure_ssh_user
  share_admin_keyring
  start_ceph_daemon mon
  wait_for "mon quorum" 30 status_is quorum
  # keep the mgr from creating the device_health_metrics pool / scraping SMART
  [ "$new" = 1 ] && { ceph_ config set mgr mgr/devicehealth/enable_monitoring false --force >/dev/null 2>&1 || true; }
  start_ceph_daemon mgr
  [ -e "$DIR/osd/ceph-$OSD_ID/whoami" ] || bootstrap_osd
  start_ceph_daemon osd
  start_sshd
  wait_for "osd.$OSD_ID up+in, mgr available, capacity reported, pgs clean" 90 cluster_ready
  if [ "$new" = 1 ]; then
    wait_for "HEALTH_OK" "$START_TIMEOUT" cluster_healthy
    touch "$DIR/.bootstrapped"
  elif ! wait_for_quiet 20 cluster_healthy; then
    # an old cluster may carry warnings its users left behind (e.g. a pool with no application)
    log "WARNING: cluster is up but not HEALTH_OK: $(ceph_ health detail 2>&1 | head -5 | tr '\n' ' ')"
  fi
  log "cluster $NAME ($(cat_fsid)) ready in $(elapsed "$t1") s: mon 127.0.0.1:$MON_PORT, ssh $SSH_USER@127.0.0.1:$SSH_PORT, CEPH_CONF=$CONF"
}

do_stop() { # graceful: the OSD first (it reports to the mon on the way down), then the rest
  [ -d "$RUN" ] || { log "no cluster in $DIR"; return 0; }
  take_lock
  signal_and_wait TERM "osd.$OSD_ID"
  signal_and_wait TERM "mgr.$MGR_ID" "mon.$MON_ID" sshd
  log "stopped (data kept in $DIR)"
}

# every process started for this cluster, found by its exact argv (`-c <this conf>` or
# `-f <this sshd_config>`): also catches a daemon still starting, with no pid file yet
stray_pids() {
  python3 - "$CONF" "$SSHD_CONFIG" "$$" <<'PYEOF'
import os, re, sys
conf, sshd_config, me = sys.argv[1], sys.argv[2], sys.argv[3]
for pid in filter(str.isdigit, os.listdir("/proc")):
    if pid == me:
        continue
    try:
        argv = open(f"/proc/{pid}/cmdline", "rb").read().decode(errors="replace").split("\0")
    except OSError:
        continue
    prog = os.path.basename(argv[0])
    pairs = set(zip(argv, argv[1:]))
    if (re.fullmatch(r"ceph-(mon|mgr|osd)", prog) and ("-c", conf) in pairs) or \
       (prog == "sshd" and ("-f", sshd_config) in pairs) or \
       (argv[0].startswith("sshd: ") and f" -f {sshd_config} " in argv[0] + " "):
        print(pid)
PYEOF
}

purge_locked() { # the data is thrown away, so no need to be gentle
  local strays
  if [ -d "$RUN" ]; then signal_and_wait KILL "osd.$OSD_ID" "mgr.$MGR_ID" "mon.$MON_ID" sshd; fi
  strays=$(stray_pids)
  if [ -n "$strays" ]; then
    log "SIGKILL leftover processes of this cluster: $(echo $strays)"
    kill -KILL $strays 2>/dev/null || true
    sleep 0.3
  fi
  if [ -d "$DIR" ]; then rm -rf "$DIR"; log "removed $DIR"; fi
}
do_purge() { take_lock; purge_locked; }

do_status() {
  local rc=0 n pid
  [ -f "$CONF" ] || { echo "no cluster '$NAME' in $DIR"; return 1; }
  for n in "mon.$MON_ID" "mgr.$MGR_ID" "osd.$OSD_ID" sshd; do
    if pid=$(live_pid "$n"); then
      echo "$n running pid=$pid rss_kb=$(awk '/VmRSS/{print $2}' "/proc/$pid/status")"
    else
      echo "$n not running"; rc=1
    fi
  done
  echo "mon 127.0.0.1:$MON_PORT (v2 :$MON_V2_PORT)  ssh $SSH_USER@127.0.0.1:$SSH_PORT  dir $DIR"
  if live_pid "mon.$MON_ID" >/dev/null; then ceph_ -s || rc=1; else rc=1; fi
  return $rc
}

do_env() {
  [ -f "$ADMIN_KEYRING" ] && [ -f "$PARAMS" ] || die "no cluster '$NAME' in $DIR"
  local key; key=$(ceph-authtool -p -n client.admin "$ADMIN_KEYRING")
  q() { printf "export %s='%s'\n" "$1" "${2//\'/\'\\\'\'}"; }
  q DEVCLUSTER_NAME "$NAME"
  q CEPH_DIR "$DIR"
  q CEPH_CONF "$CONF"
  q CEPH_FSID "$(cat_fsid)"
  q CEPH_MON_HOST "127.0.0.1:$MON_PORT"
  q CEPH_MON_PORT "$MON_PORT"
  q CEPH_MON_V2_PORT "$MON_V2_PORT"
  q CEPH_ADMIN_KEYRING "$ADMIN_KEYRING"
  q CEPH_ADMIN_KEY "$key"
  q SSH_HOST 127.0.0.1
  q SSH_PORT "$SSH_PORT"
  q SSH_USER "$SSH_USER"
  q SSH_PASSWORD "$SSH_PASSWORD"
  q MON_URL "$SSH_USER:$SSH_PASSWORD@127.0.0.1:$SSH_PORT/?monPort=$MON_PORT"
}

do_daemon_stop() {
  [ -f "$CONF" ] || die "no cluster '$NAME' in $DIR"
  take_lock
  signal_and_wait TERM "$(daemon_name "$DAEMON")"
  if [ "$DAEMON" = mgr ] && live_pid "mon.$MON_ID" >/dev/null; then
    # make the loss visible at once (else the mon notices after mgr_beacon_grace, 30 s)
    ceph_ mgr fail "$MGR_ID" >/dev/null 2>&1 || true
  fi
}

do_daemon_start() {
  [ -e "$DIR/.bootstrapped" ] || die "no cluster '$NAME' in $DIR (run: $0 start $NAME)"
  take_lock
  case "$DAEMON" in
    mon)  start_ceph_daemon mon; wait_for "mon quorum" 30 status_is quorum ;;
    mgr)  start_ceph_daemon mgr; wait_for "mgr available" 60 status_is mgr ;;
    osd)  start_ceph_daemon osd; wait_for "osd.$OSD_ID up+in" 60 osd_ready ;;
    sshd) start_sshd ;;
  esac
}

case "$CMD" in
  start) do_start ;;
  stop) if [ "$PURGE" = 1 ]; then do_purge; else do_stop; fi ;;
  purge) do_purge ;;
  status) do_status ;;
  env) do_env ;;
  daemon-stop) do_daemon_stop ;;
  daemon-start) do_daemon_start ;;
esac
