#!/usr/bin/env bash
# A PostgreSQL server of its own on 127.0.0.1 (Debian bookworm, root, no systemd) for MLflow's and
# Optuna's stores: its own cluster (initdb), port 5433, password logins only (scram-sha-256).
#
#   launchers/postgres.sh start    # install what is missing, create the cluster, role and databases, start it
#   launchers/postgres.sh stop     # stop the server it started (idempotent)
#   launchers/postgres.sh status   # exit 0 only when the server accepts connections (pg_isready)
#   launchers/postgres.sh restart  # stop, then start
#
# State lives under $SWEEP_SFT_PG_STATE (default /var/lib/sweep-sft-postgres), logs under
# $SWEEP_SFT_PG_LOGS (default /var/log/sweep-sft-postgres). The role `sweep_sft` owns the databases
# `mlflow` and `optuna`; its password goes into the libpq password file ($PGPASSFILE, else
# /root/.pgpass), so URLs such as postgresql://sweep_sft@127.0.0.1:5433/optuna carry none.
# Facts behind the settings: launchers/README.md.
set -euo pipefail

STATE_DIR=${SWEEP_SFT_PG_STATE:-/var/lib/sweep-sft-postgres}
LOG_DIR=${SWEEP_SFT_PG_LOGS:-/var/log/sweep-sft-postgres}
PORT=${SWEEP_SFT_PG_PORT:-5433}
WAIT_S=${SWEEP_SFT_PG_WAIT_S:-60}
# Tests under pytest-xdist each open their own databases and an mlflow server opens a pool per
# worker: the default 100 runs out.
MAX_CONNECTIONS=${SWEEP_SFT_PG_MAX_CONNECTIONS:-200}
DATA_DIR=$STATE_DIR/data
# Our own socket directory, so nothing here touches a system cluster's /run/postgresql.
RUN_DIR=$STATE_DIR/run
LOG_FILE=$LOG_DIR/postgresql.log
ROLE=sweep_sft
DATABASES=(mlflow optuna)
# The role's password: generated at the first start, kept root-only (mode 600) and reused.
PASS_FILE=$STATE_DIR/password
PGPASS=${PGPASSFILE:-/root/.pgpass}
PACKAGES=(postgresql)

T0=$(date +%s.%N)
now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }
say() { echo "[postgres $(elapsed "$T0")s] $*"; }

fail() {  # fail STEP: a clear message, the tail of the server's log, exit 1
  echo "[postgres] FAILED at step: $1" >&2
  if [[ -f $LOG_FILE ]]; then
    echo "[postgres] last lines of $LOG_FILE:" >&2
    tail -n 15 "$LOG_FILE" >&2
  fi
  exit 1
}
# shellcheck source=launchers/common.sh
. "$(dirname "${BASH_SOURCE[0]}")/common.sh"

need_root() { [[ $(id -u) == 0 ]] || { echo "postgres.sh must run as root" >&2; exit 2; }; }

pg_bin() {  # the newest installed major version's bin folder (15 on bookworm), or nothing
  local dir
  dir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
  [[ -n $dir && -x $dir/postgres ]] && echo "$dir"
  return 0
}

as_pg() { runuser -u postgres -- "$@"; }

running() {  # our cluster's postmaster is alive (a system cluster on another port does not count)
  [[ -n ${BIN:-} && -f $DATA_DIR/postmaster.pid ]] && as_pg "$BIN/pg_ctl" status -D "$DATA_DIR" >/dev/null 2>&1
}

accepting() { [[ -n ${BIN:-} ]] && "$BIN/pg_isready" -q -h 127.0.0.1 -p "$PORT" -t 2; }

superuser_sql() {  # SQL on stdin, as the postgres superuser over our socket (peer authentication)
  as_pg "$BIN/psql" -X -q -v ON_ERROR_STOP=1 -h "$RUN_DIR" -p "$PORT" -d postgres "$@"
}

# ---------------------------------------------------------------------------------------------
install_packages() {
  BIN=$(pg_bin)
  if [[ -n $BIN ]] && id postgres >/dev/null 2>&1; then say "packages already installed ($BIN)"; return; fi
  apt_install "the package's own cluster on 5432 is created but never started; this script runs its own" "${PACKAGES[@]}"
  BIN=$(pg_bin)
  [[ -n $BIN ]] || fail "find the PostgreSQL binaries under /usr/lib/postgresql/*/bin after installing"
}

role_password() { kept_password "$PASS_FILE" "the role's password" 32; ROLE_PASS=$PASSWORD; }

init_cluster() {
  mkdir -p "$STATE_DIR" "$LOG_DIR"
  chmod 755 "$STATE_DIR"  # postgres must reach data/ and run/ in it; the password file stays 600
  install -d -m 700 -o postgres -g postgres "$DATA_DIR"
  install -d -m 755 -o postgres -g postgres "$RUN_DIR"
  touch "$LOG_FILE"; chown postgres:postgres "$LOG_DIR" "$LOG_FILE"
  [[ -s $DATA_DIR/PG_VERSION ]] && return
  local t; t=$(now)
  # peer for the socket, scram for TCP from the start: never a moment with `trust`
  as_pg "$BIN/initdb" -D "$DATA_DIR" -U postgres -E UTF8 --no-locale --auth-local=peer \
    --auth-host=scram-sha-256 >"$LOG_DIR/initdb.log" 2>&1 \
    || { tail -n 20 "$LOG_DIR/initdb.log" >&2; fail "initdb $DATA_DIR"; }
  say "cluster created in $DATA_DIR ($(elapsed "$t")s)"
}

write_config() {
  CONFIG_CHANGED=0
  grep -qx "include_if_exists = 'sweep_sft.conf'" "$DATA_DIR/postgresql.conf" \
    || echo "include_if_exists = 'sweep_sft.conf'" >>"$DATA_DIR/postgresql.conf"
  write_if_changed "$DATA_DIR/sweep_sft.conf" 600 postgres <<EOF && CONFIG_CHANGED=1 || true
# Written by launchers/postgres.sh (sweep-sft). Do not edit.
listen_addresses = '127.0.0.1'
port = $PORT
unix_socket_directories = '$RUN_DIR'
max_connections = $MAX_CONNECTIONS
password_encryption = 'scram-sha-256'
log_line_prefix = '%m [%p] %q%u@%d '
EOF
  write_if_changed "$DATA_DIR/pg_hba.conf" 600 postgres <<EOF && CONFIG_CHANGED=1 || true
# Written by launchers/postgres.sh (sweep-sft). Do not edit. Nothing here is trusted without a
# password: the superuser over the socket as the OS user postgres (peer), everyone else over TCP
# from 127.0.0.1 with a SCRAM password.
# TYPE  DATABASE  USER      ADDRESS        METHOD
local   all       postgres                 peer
host    all       all       127.0.0.1/32   scram-sha-256
EOF
  say "config: 127.0.0.1:$PORT, max_connections $MAX_CONNECTIONS$( ((CONFIG_CHANGED)) && echo ' (written)' || echo ' (unchanged)')"
}

start_server() {
  if running; then
    ((CONFIG_CHANGED)) || return 0
    say "config changed: restarting the server"
    as_pg "$BIN/pg_ctl" stop -D "$DATA_DIR" -m fast -w -t "$WAIT_S" >/dev/null || fail "stop the server"
  fi
  # setsid: the server must outlive the shell (make, a test) that started it
  setsid runuser -u postgres -- "$BIN/pg_ctl" start -D "$DATA_DIR" -l "$LOG_FILE" -w -t "$WAIT_S" \
    </dev/null >/dev/null 2>&1 || fail "start the server (pg_ctl start)"
  accepting || fail "the server accepts connections on 127.0.0.1:$PORT (pg_isready)"
  say "server started"
}

create_role_and_databases() {
  local db sql
  # on stdin, not the command line: other users can read a process's arguments
  sql="SELECT 'CREATE ROLE $ROLE' WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '$ROLE')\\gexec
ALTER ROLE $ROLE LOGIN CREATEDB NOSUPERUSER PASSWORD '$ROLE_PASS';"
  for db in "${DATABASES[@]}"; do
    sql+="
SELECT 'CREATE DATABASE $db OWNER $ROLE' WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = '$db')\\gexec"
  done
  superuser_sql >/dev/null 2>"$LOG_DIR/setup.log" <<<"$sql" \
    || { cat "$LOG_DIR/setup.log" >&2; fail "create role $ROLE / databases ${DATABASES[*]}"; }
}

write_pgpass() {  # our one line in the libpq password file; other lines stay as they are
  local prefix="127.0.0.1:$PORT:*:$ROLE:" tmp
  tmp=$(mktemp)
  chmod 600 "$tmp"
  if [[ -f $PGPASS ]]; then grep -vF "$prefix" "$PGPASS" >"$tmp" || true; fi
  echo "$prefix$ROLE_PASS" >>"$tmp"
  if [[ -f $PGPASS ]] && cmp -s "$tmp" "$PGPASS"; then rm -f "$tmp"; chmod 600 "$PGPASS"; return; fi
  mkdir -p "$(dirname "$PGPASS")"
  install -m 600 "$tmp" "$PGPASS"; rm -f "$tmp"
  say "password file $PGPASS: line for $ROLE@127.0.0.1:$PORT written (mode 600)"
}

cmd_start() {
  need_root
  mkdir -p "$LOG_DIR" "$STATE_DIR"
  install_packages
  role_password
  init_cluster
  write_config
  start_server
  create_role_and_databases
  write_pgpass
  say "ready: postgresql://$ROLE@127.0.0.1:$PORT/<${DATABASES[*]}> (start took $(elapsed "$T0")s)"
}

cmd_stop() {
  need_root
  BIN=$(pg_bin)
  if ! running; then say "not running"; return; fi
  as_pg "$BIN/pg_ctl" stop -D "$DATA_DIR" -m fast -w -t "$WAIT_S" >/dev/null || fail "stop the server"
  say "stopped"
}

cmd_status() {
  BIN=$(pg_bin)
  if [[ -z $BIN ]]; then echo "postgresql is not installed"; return 1; fi
  local down=0
  if running; then echo "postgres   running (pid $(head -n 1 "$DATA_DIR/postmaster.pid"), $DATA_DIR)"
  else echo "postgres   not running ($DATA_DIR)"; down=1; fi
  "$BIN/pg_isready" -h 127.0.0.1 -p "$PORT" -t 2 || down=1
  return $down
}

run_command "${1:-}"
