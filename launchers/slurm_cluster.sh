#!/usr/bin/env bash
# A real one-node Slurm cluster on localhost (Debian bookworm, root, no systemd), with accounting
# (slurmdbd on MariaDB), which submitit needs: it learns job states only from `sacct`.
#
#   launchers/slurm_cluster.sh start    # install what is missing, write the config, start what is not running
#   launchers/slurm_cluster.sh stop     # stop every daemon it started (idempotent)
#   launchers/slurm_cluster.sh status   # which daemons run, and sinfo
#   launchers/slurm_cluster.sh restart  # stop, then start
#
# State lives under $SLURM_LOCAL_STATE (default /var/lib/sweep-sft-slurm), logs under
# $SLURM_LOCAL_LOGS (default /var/log/sweep-sft-slurm); the config is /etc/slurm/{slurm,slurmdbd}.conf,
# the one partition is `debug` (the default). Facts behind the settings: docs in launchers/README.md.
set -euo pipefail

STATE_DIR=${SLURM_LOCAL_STATE:-/var/lib/sweep-sft-slurm}
LOG_DIR=${SLURM_LOCAL_LOGS:-/var/log/sweep-sft-slurm}
CLUSTER=${SLURM_LOCAL_CLUSTER:-sweepsft}
PARTITION=debug
CONF_DIR=/etc/slurm
RUN_DIR=$STATE_DIR/run
DB_NAME=slurm_acct_db
DB_USER=slurm
# The database user's password: generated at the first start, kept root-only (mode 600) and reused.
DB_PASS_FILE=$STATE_DIR/db_password
PACKAGES=(munge slurmctld slurmd slurm-client slurmdbd mariadb-server)
WAIT_S=${SLURM_LOCAL_WAIT_S:-60}
# Jobs that may share one CPU of the debug partition: 2 CPUs x 16 = 32 one-CPU trials at once, so a
# sweep's trials run concurrently even though each mostly waits (tests, MLflow server load).
OVERSUBSCRIBE=${SLURM_LOCAL_OVERSUBSCRIBE:-16}
# A job without --mem gets the node's memory shared by cpus x this many jobs (at most
# OVERSUBSCRIBE): a real trial's share stays about 1.4 GB on a 23 GB node; small jobs ask for less.
DEF_MEM_SLOTS=${SLURM_LOCAL_DEF_MEM_SLOTS:-8}

# daemon -> pidfile / log
declare -A PIDFILE=(
  [munged]=/run/munge/munged.pid
  [mariadbd]=/run/mysqld/mariadbd.pid
  [slurmdbd]=$RUN_DIR/slurmdbd.pid
  [slurmctld]=$RUN_DIR/slurmctld.pid
  [slurmd]=$RUN_DIR/slurmd.pid
)
declare -A LOGFILE=(
  [munged]=/var/log/munge/munged.log
  [mariadbd]=$LOG_DIR/mariadbd.log
  [slurmdbd]=$LOG_DIR/slurmdbd.log
  [slurmctld]=$LOG_DIR/slurmctld.log
  [slurmd]=$LOG_DIR/slurmd.log
)
DAEMONS=(munged mariadbd slurmdbd slurmctld slurmd)

T0=$(date +%s.%N)
now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }
say() { echo "[slurm_cluster $(elapsed "$T0")s] $*"; }

fail() {  # fail STEP [DAEMON]: a clear message, the tail of that daemon's log, exit 1
  local step=$1 daemon=${2:-}
  echo "[slurm_cluster] FAILED at step: $step" >&2
  if [[ -n $daemon && -f ${LOGFILE[$daemon]} ]]; then
    echo "[slurm_cluster] last lines of ${LOGFILE[$daemon]}:" >&2
    tail -n 15 "${LOGFILE[$daemon]}" >&2
  fi
  exit 1
}
# shellcheck source=launchers/common.sh
. "$(dirname "${BASH_SOURCE[0]}")/common.sh"

need_root() { [[ $(id -u) == 0 ]] || { echo "slurm_cluster.sh must run as root" >&2; exit 2; }; }

pid_of() {  # the pid of a running daemon (from its pidfile, else by exact process name), or nothing
  local d=$1 pid=""
  if [[ -s ${PIDFILE[$d]} ]]; then
    pid=$(tr -dc 0-9 <"${PIDFILE[$d]}")
    if [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null && [[ $(cat "/proc/$pid/comm" 2>/dev/null) == "$d" ]]; then
      echo "$pid"; return 0
    fi
  fi
  pgrep -x "$d" | head -n 1 || true
}
running() { [[ -n $(pid_of "$1") ]]; }

wait_for() {  # wait_for SECONDS CMD...: retry CMD until it succeeds (0) or SECONDS pass (1)
  local deadline; deadline=$(awk -v t="$(now)" -v w="$1" 'BEGIN { printf "%.3f", t + w }'); shift
  until "$@" >/dev/null 2>&1; do
    awk -v t="$(now)" -v d="$deadline" 'BEGIN { exit !(t > d) }' && return 1
    [[ -n ${WATCH:-} ]] && ! running "$WATCH" && ! "$@" >/dev/null 2>&1 && return 2  # it died
    sleep 0.2
  done
}

wait_daemon() {  # wait_daemon DAEMON STEP CMD...: CMD must succeed while DAEMON stays up
  local d=$1 step=$2 rc=0; shift 2
  sleep 0.2  # the daemon's parent exits before the child has written its pidfile
  WATCH=$d wait_for "$WAIT_S" "$@" || rc=$?
  ((rc == 0)) || fail "$step: $( ((rc == 2)) && echo "$d exited" || echo "no answer within ${WAIT_S}s")" "$d"
}

# ---------------------------------------------------------------------------------------------
install_packages() {
  local missing=() p
  for p in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if ((${#missing[@]} == 0)); then say "packages already installed"; return; fi
  apt_install "this script starts the daemons" "${missing[@]}"
}

ensure_hostname() {
  NODE=$(hostname -s)
  if ! getent hosts "$NODE" >/dev/null; then
    echo "127.0.0.1 $NODE" >>/etc/hosts
    say "added '127.0.0.1 $NODE' to /etc/hosts"
  fi
  # slurmd and slurmdbd listen on what this name resolves to (NoInAddrAny): it must be loopback
  local addr; addr=$(getent ahostsv4 "$NODE" | awk 'NR == 1 { print $1 }')
  [[ $addr == 127.* ]] || fail "host name $NODE resolves to '$addr', not a loopback address: the daemons would listen there; map it to 127.0.0.1 in /etc/hosts"
}

db_password() { kept_password "$DB_PASS_FILE" "the database password" 24; DB_PASS=$PASSWORD; }

write_config() {
  mkdir -p "$CONF_DIR" "$STATE_DIR/ctld" "$STATE_DIR/slurmd" "$RUN_DIR" "$LOG_DIR"
  db_password
  local hw cpus boards sockets cores threads mem real def_mem
  hw=$(slurmd -C 2>/dev/null | head -n 1) || fail "slurmd -C (hardware detection)"
  field() { sed -n "s/.*\b$1=\([0-9]*\).*/\1/p" <<<"$hw"; }
  cpus=$(field CPUs); boards=$(field Boards); sockets=$(field SocketsPerBoard)
  cores=$(field CoresPerSocket); threads=$(field ThreadsPerCore); mem=$(field RealMemory)
  [[ -n $cpus && -n $mem ]] || fail "parse 'slurmd -C' output: $hw"
  real=$((mem * 95 / 100))
  [[ $OVERSUBSCRIBE =~ ^[1-9][0-9]*$ ]] || fail "SLURM_LOCAL_OVERSUBSCRIBE must be a positive integer, got '$OVERSUBSCRIBE'"
  # a job without --mem gets its share of the node's memory as if cpus x DEF_MEM_SLOTS jobs ran
  local slots=$(( DEF_MEM_SLOTS < OVERSUBSCRIBE ? DEF_MEM_SLOTS : OVERSUBSCRIBE ))
  def_mem=$((real / (cpus * slots)))
  CONFIG_CHANGED=0
  write_if_changed "$CONF_DIR/slurm.conf" 644 <<EOF && CONFIG_CHANGED=1 || true
# Written by launchers/slurm_cluster.sh (sweep-sft): a one-node cluster on localhost. Do not edit.
ClusterName=$CLUSTER
# Every daemon listens on 127.0.0.1 only: slurmctld on its ControlAddr (NoCtldInAddrAny), slurmd
# and slurmdbd on what their host names resolve to (NoInAddrAny; NodeAddr / DbdAddr below).
SlurmctldHost=$NODE(127.0.0.1)
CommunicationParameters=NoCtldInAddrAny,NoInAddrAny
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# a requeued job is held for cred_expire seconds (default 120) before it may start again
AuthInfo=cred_expire=5
MpiDefault=none
# no cgroups here
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=$def_mem
SchedulerType=sched/backfill
SchedulerParameters=batch_sched_delay=0,sched_min_interval=0,bf_interval=1,sched_interval=2
# completed jobs leave squeue after 30 s (states stay in sacct)
MinJobAge=30
# SIGTERM -> SIGKILL grace at the time limit / scancel
KillWait=5
JobRequeue=1
ReturnToService=2
InactiveLimit=0
Waittime=0
SlurmctldTimeout=30
SlurmdTimeout=60
# accounting (sacct), needed by submitit
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
JobCompType=jobcomp/none
# memory limits without cgroups: poll every 2 s, kill a step over its --mem
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherParams=OverMemoryKill
JobAcctGatherFrequency=task=2
StateSaveLocation=$STATE_DIR/ctld
SlurmdSpoolDir=$STATE_DIR/slurmd
SlurmctldPidFile=${PIDFILE[slurmctld]}
SlurmdPidFile=${PIDFILE[slurmd]}
SlurmctldLogFile=${LOGFILE[slurmctld]}
SlurmdLogFile=${LOGFILE[slurmd]}
SlurmctldDebug=info
SlurmdDebug=info
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$cpus Boards=${boards:-1} SocketsPerBoard=${sockets:-1} CoresPerSocket=${cores:-$cpus} ThreadsPerCore=${threads:-1} RealMemory=$real State=UNKNOWN
# each CPU may be allocated to up to $OVERSUBSCRIBE jobs at once (no gang scheduling: they all run)
PartitionName=$PARTITION Nodes=$NODE Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:$OVERSUBSCRIBE
EOF
  write_if_changed "$CONF_DIR/slurmdbd.conf" 600 <<EOF && CONFIG_CHANGED=1 || true
# Written by launchers/slurm_cluster.sh (sweep-sft). Must stay mode 600.
AuthType=auth/munge
DbdHost=localhost
DbdAddr=127.0.0.1
# listen on what the host name resolves to (127.0.0.1, see ensure_hostname), not on every interface
CommunicationParameters=NoInAddrAny
SlurmUser=root
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=$DB_USER
StoragePass=$DB_PASS
StorageLoc=$DB_NAME
PidFile=${PIDFILE[slurmdbd]}
LogFile=${LOGFILE[slurmdbd]}
DebugLevel=info
EOF
  say "config ${CONF_DIR}/slurm.conf: $NODE CPUs=$cpus RealMemory=$real (of $mem) MB, DefMemPerCPU=$def_mem, partition $PARTITION OverSubscribe=FORCE:$OVERSUBSCRIBE$( ((CONFIG_CHANGED)) && echo ' (written)' || echo ' (unchanged)')"
}

# ---------------------------------------------------------------------------------------------
start_munged() {
  if running munged; then return; fi
  if [[ ! -s /etc/munge/munge.key ]]; then
    mungekey --create --keyfile=/etc/munge/munge.key >/dev/null 2>&1 || fail "create munge key"
  fi
  chown munge:munge /etc/munge/munge.key; chmod 400 /etc/munge/munge.key
  mkdir -p /run/munge /var/log/munge /var/lib/munge
  chown munge:munge /run/munge /var/log/munge /var/lib/munge
  runuser -u munge -- /usr/sbin/munged >/dev/null 2>&1 || fail "start munged" munged
  wait_daemon munged "start munged (munge -n | unmunge)" bash -c 'munge -n | unmunge'
  say "munged started"
}

mariadb_ping() { timeout 5 mariadb-admin --protocol=socket ping; }
start_mariadbd() {
  if ! running mariadbd; then
    mkdir -p /run/mysqld; chown mysql:mysql /run/mysqld
    touch "${LOGFILE[mariadbd]}"; chown mysql:mysql "${LOGFILE[mariadbd]}"  # mariadbd runs as mysql
    if [[ ! -d /var/lib/mysql/mysql ]]; then
      mariadb-install-db --user=mysql --datadir=/var/lib/mysql >"$LOG_DIR/mariadb-install.log" 2>&1 \
        || { tail -n 20 "$LOG_DIR/mariadb-install.log" >&2; fail "mariadb-install-db"; }
    fi
    setsid /usr/sbin/mariadbd --user=mysql --pid-file="${PIDFILE[mariadbd]}" \
      --log-error="${LOGFILE[mariadbd]}" --skip-networking=0 --bind-address=127.0.0.1 \
      </dev/null >/dev/null 2>&1 &
    wait_daemon mariadbd "start mariadbd (mariadb-admin ping)" mariadb_ping
    say "mariadbd started"
  fi
  # on stdin, not the command line: other users can read a process's arguments
  mariadb 2>"$LOG_DIR/mariadb-setup.log" <<SQL || { cat "$LOG_DIR/mariadb-setup.log" >&2; fail "create database $DB_NAME / user $DB_USER" mariadbd; }
CREATE DATABASE IF NOT EXISTS \`$DB_NAME\`;
CREATE USER IF NOT EXISTS '$DB_USER'@'localhost' IDENTIFIED BY '$DB_PASS';
ALTER USER '$DB_USER'@'localhost' IDENTIFIED BY '$DB_PASS';
GRANT ALL ON \`$DB_NAME\`.* TO '$DB_USER'@'localhost';
SQL
}

start_slurmdbd() {
  if ! running slurmdbd; then
    slurmdbd >/dev/null 2>&1 || fail "start slurmdbd" slurmdbd
    wait_daemon slurmdbd "start slurmdbd (sacctmgr list cluster)" sacctmgr -nP list cluster format=cluster
    say "slurmdbd started"
  fi
  if ! sacctmgr -nP list cluster format=cluster 2>/dev/null | grep -qx "$CLUSTER"; then
    sacctmgr -i add cluster "$CLUSTER" >/dev/null 2>&1 || fail "sacctmgr add cluster $CLUSTER" slurmdbd
    say "cluster $CLUSTER registered in slurmdbd"
  fi
}

start_slurmctld() {
  if running slurmctld; then return; fi
  slurmctld >/dev/null 2>&1 || fail "start slurmctld" slurmctld
  wait_daemon slurmctld "start slurmctld (scontrol ping)" scontrol ping
  say "slurmctld started"
}

start_slurmd() {
  if running slurmd; then return; fi
  slurmd >/dev/null 2>&1 || fail "start slurmd" slurmd
  say "slurmd started"
}

node_state() { sinfo -h -N -n "$NODE" -o %t 2>/dev/null | head -n 1; }
node_idle() { [[ $(node_state) =~ ^(idle|mix|alloc)$ ]]; }
wait_node() {
  local st; st=$(node_state)
  if [[ $st =~ ^(drain|drng|down|fail) ]]; then  # left down/drained by an earlier run
    scontrol update nodename="$NODE" state=resume >/dev/null 2>&1 || true
  fi
  WATCH=slurmd wait_for "$WAIT_S" node_idle || fail "node $NODE idle in sinfo (state: '$(node_state)')" slurmd
  wait_for "$WAIT_S" sacct -nP -X -o JobID -S now-1minutes || fail "sacct answers" slurmdbd
}

restart_slurm_daemons() {  # the config changed under running daemons
  say "config changed: restarting slurmdbd, slurmctld, slurmd"
  stop_daemons slurmd slurmctld
  stop_daemons slurmdbd
}

cmd_start() {
  need_root
  mkdir -p "$LOG_DIR" "$STATE_DIR"
  install_packages
  ensure_hostname
  write_config
  if ((CONFIG_CHANGED)) && { running slurmctld || running slurmd; }; then
    restart_slurm_daemons
  fi
  start_munged
  start_mariadbd
  start_slurmdbd
  start_slurmctld
  start_slurmd
  wait_node
  say "ready: node $NODE $(node_state), partition $PARTITION, cluster $CLUSTER (start took $(elapsed "$T0")s)"
}

# ---------------------------------------------------------------------------------------------
stop_daemons() {  # SIGTERM (by pidfile) to all given daemons at once, wait up to 20 s, then SIGKILL
  local d pid i left
  declare -A pids=()
  for d in "$@"; do
    pid=$(pid_of "$d")
    [[ -n $pid ]] && { pids[$d]=$pid; kill -TERM "$pid" 2>/dev/null || true; }
  done
  for ((i = 0; i < 200; i++)); do
    left=0
    for d in "${!pids[@]}"; do
      if kill -0 "${pids[$d]}" 2>/dev/null; then left=1
      else say "$d stopped (pid ${pids[$d]})"; unset "pids[$d]"; fi
    done
    ((left)) || return 0
    sleep 0.1
  done
  for d in "${!pids[@]}"; do
    kill -KILL "${pids[$d]}" 2>/dev/null || true
    say "$d killed (pid ${pids[$d]}, did not stop within 20 s)"
  done
}

cmd_stop() {
  need_root
  stop_daemons slurmd slurmctld
  stop_daemons slurmdbd
  stop_daemons mariadbd munged
  say "all stopped"
}

cmd_status() {
  local d pid down=0
  for d in "${DAEMONS[@]}"; do
    pid=$(pid_of "$d")
    if [[ -n $pid ]]; then printf '%-10s running (pid %s)\n' "$d" "$pid"
    else printf '%-10s not running\n' "$d"; down=1; fi
  done
  if command -v sinfo >/dev/null && running slurmctld; then sinfo; fi
  return $down
}

run_command "${1:-}"
