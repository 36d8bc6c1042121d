# Helpers the local-infrastructure scripts share (sourced by slurm_cluster.sh and postgres.sh,
# which define say and fail first).

write_if_changed() {  # write_if_changed PATH MODE [OWNER]: stdin -> PATH if different; returns 0 if it changed
  local path=$1 mode=$2 owner=${3:-root} tmp; tmp=$(mktemp)
  cat >"$tmp"
  if [[ -f $path ]] && cmp -s "$tmp" "$path"; then rm -f "$tmp"; chmod "$mode" "$path"; return 1; fi
  install -m "$mode" -o "$owner" -g "$owner" "$tmp" "$path"; rm -f "$tmp"; return 0
}

kept_password() {  # kept_password FILE WHAT BYTES: a random password created once (root, mode 600), then read back into PASSWORD
  local file=$1 what=$2 bytes=$3
  if [[ ! -s $file ]]; then
    (umask 077; head -c "$bytes" /dev/urandom | base64 | tr -dc A-Za-z0-9 >"$file") || fail "generate $file"
    say "generated $what in $file (mode 600)"
  fi
  chown root:root "$file"; chmod 600 "$file"
  PASSWORD=$(<"$file")
  [[ $PASSWORD =~ ^[A-Za-z0-9]{16,}$ ]] || fail "$file must hold one password of 16+ letters and digits"
}

run_command() {  # run_command ARG: the script's command (cmd_start, cmd_stop, cmd_status defined by it)
  case ${1:-} in
    start) cmd_start ;;
    stop) cmd_stop ;;
    restart) cmd_stop; T0=$(now); cmd_start ;;
    status) cmd_status ;;
    *) echo "usage: $0 start|stop|restart|status" >&2; exit 2 ;;
  esac
}

apt_install() {  # apt_install NOTE PACKAGE...: Debian packages installed, apt's output in $LOG_DIR/apt.log
  local note=$1; shift
  say "installing: $*"
  local t; t=$(now)
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >"$LOG_DIR/apt.log" 2>&1 || { tail -n 20 "$LOG_DIR/apt.log" >&2; fail "apt-get update"; }
  # "policy-rc.d denied execution of start" in the log is expected: $note
  apt-get install -y -qq --no-install-recommends "$@" >>"$LOG_DIR/apt.log" 2>&1 \
    || { tail -n 20 "$LOG_DIR/apt.log" >&2; fail "apt-get install $*"; }
  say "installed in $(elapsed "$t")s"
}
