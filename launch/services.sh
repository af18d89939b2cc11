#!/usr/bin/env bash
# The team stack on this machine: a PostgreSQL server (database `optuna` for studies, `mlflow` for runs),
# reachable only through a Unix socket, and an MLflow tracking server on 127.0.0.1 that keeps its runs in
# PostgreSQL and proxies artifacts (clients upload through HTTP; they need no shared filesystem).
#
#   eval "$(launch/services.sh up)"   start what is not running; prints `export MLFLOW_TRACKING_URI=...`
#                                     and `export OPTUNA_STORAGE=...` for the shell to eval
#   launch/services.sh status         what runs (exit 0 when both do, 3 otherwise)
#   launch/services.sh down           stop what `up` started in this directory (nothing else)
#
# ANKH3_SERVICES_DIR: data, socket, logs and artifacts (default: .services/ in the repository, git-ignored).
# ANKH3_MLFLOW_PORT: the tracking server's port (default: a free one, kept for the directory).
# Root runs PostgreSQL as the `postgres` user (it refuses to run as root); PostgreSQL itself comes from
# Debian's package, installed with apt-get when absent.
set -euo pipefail
usage="usage: launch/services.sh up|down|status"
[ $# -eq 1 ] || { echo "error: $usage" >&2; exit 2; }
action="$1"
case "$action" in up|down|status) ;; *) echo "error: unknown action '$action'; $usage" >&2; exit 2 ;; esac

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dir="${ANKH3_SERVICES_DIR:-$root/.services}"
mkdir -p "$dir"
dir="$(cd "$dir" && pwd)"
pgdata="$dir/postgres"
socket_dir="$dir/socket"
mlflow_pid_file="$dir/mlflow.pid"
PG_USER=ankh3  # the database superuser initdb creates; trusted on the socket only, which only its owner can open

say() { echo "[services] $*" >&2; }
fail() { echo "error: $*" >&2; exit 1; }

as_db_owner() {  # PostgreSQL refuses to run as root
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

pg_bindir() {  # the newest installed PostgreSQL, Debian's layout first
  local d
  for d in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r); do
    [ -x "$d/initdb" ] && { echo "$d"; return 0; }
  done
  command -v initdb >/dev/null 2>&1 && { dirname "$(readlink -f "$(command -v initdb)")"; return 0; }
  return 1
}

install_postgres() {
  [ "$(id -u)" = 0 ] || fail "PostgreSQL is not installed; run: sudo apt-get install -y postgresql (then launch/services.sh up again)"
  command -v apt-get >/dev/null || fail "PostgreSQL is not installed and there is no apt-get; install PostgreSQL 13 or newer (initdb on PATH)"
  say "installing PostgreSQL (apt-get install -y postgresql)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -q postgresql >&2 || { apt-get update -q >&2 && apt-get install -y -q postgresql >&2; } \
    || fail "apt-get install postgresql failed (see above)"
}

pg_running() { [ -f "$pgdata/PG_VERSION" ] && as_db_owner "$bin/pg_ctl" -D "$pgdata" status >/dev/null 2>&1; }

mlflow_pid() {  # the pid of the tracking server this directory started, if it still runs
  local pid
  [ -f "$mlflow_pid_file" ] || return 1
  pid="$(cat "$mlflow_pid_file")"
  kill -0 "$pid" 2>/dev/null && [ "$(ps -o pgid= -p "$pid" | tr -d ' ')" = "$pid" ] && { echo "$pid"; return 0; }
  return 1
}

mlflow_port() { cat "$dir/mlflow.port" 2>/dev/null || true; }

mlflow_healthy() {
  python3 -c "import sys, urllib.request; urllib.request.urlopen(sys.argv[1] + '/health', timeout=3)" \
    "http://127.0.0.1:$(mlflow_port)" 2>/dev/null
}

db_url() { echo "postgresql://$PG_USER@/$1?host=$socket_dir"; }

print_exports() {
  printf "export MLFLOW_TRACKING_URI='%s'\n" "http://127.0.0.1:$(mlflow_port)"
  printf "export OPTUNA_STORAGE='%s'\n" "$(db_url optuna)"
}

bin="$(pg_bindir || true)"

case "$action" in
status)
  code=0
  if [ -n "$bin" ] && pg_running; then
    echo "postgres: running ($(db_url optuna), $(db_url mlflow))"
  else
    echo "postgres: stopped"; code=3
  fi
  if pid="$(mlflow_pid)"; then
    if mlflow_healthy; then echo "mlflow: running at http://127.0.0.1:$(mlflow_port) (pid $pid)"
    else echo "mlflow: starting or unhealthy (pid $pid, log $dir/mlflow.log)"; code=3; fi
  else
    echo "mlflow: stopped"; code=3
  fi
  exit $code
  ;;

down)
  if pid="$(mlflow_pid)"; then
    kill -TERM -- "-$pid" 2>/dev/null || true  # the server's process group: it and its workers, nothing else
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    kill -KILL -- "-$pid" 2>/dev/null || true
    say "mlflow server stopped"
  fi
  rm -f "$mlflow_pid_file"
  if [ -n "$bin" ] && pg_running; then
    as_db_owner "$bin/pg_ctl" -D "$pgdata" -m fast -w stop >/dev/null
    say "postgres stopped"
  fi
  exit 0
  ;;
esac

# ---- up
[ -n "$bin" ] || { install_postgres; bin="$(pg_bindir)" || fail "PostgreSQL installed but initdb not found"; }
if [ ! -f "$pgdata/PG_VERSION" ]; then
  say "creating the database cluster in $pgdata"
  mkdir -p "$pgdata" "$socket_dir"
  [ "$(id -u)" = 0 ] && chown postgres: "$pgdata" "$socket_dir" && chmod o+x "$dir"
  chmod 700 "$pgdata" "$socket_dir"
  as_db_owner "$bin/initdb" -D "$pgdata" -U "$PG_USER" --auth=trust -E UTF8 >"$dir/initdb.log" 2>&1 \
    || fail "initdb failed; see $dir/initdb.log"
  cat >>"$pgdata/postgresql.conf" <<EOF
# launch/services.sh: no TCP; the socket is open to its owner only (trust auth relies on that)
listen_addresses = ''
unix_socket_directories = '$socket_dir'
unix_socket_permissions = 0700
max_connections = 200
EOF
fi
if ! pg_running; then
  touch "$dir/postgres.log"
  [ "$(id -u)" = 0 ] && chown postgres: "$dir/postgres.log"
  as_db_owner "$bin/pg_ctl" -D "$pgdata" -l "$dir/postgres.log" -w -t 60 start >/dev/null \
    || fail "PostgreSQL did not start; see $dir/postgres.log"
  say "postgres running on $socket_dir"
fi
for db in optuna mlflow; do
  exists="$(as_db_owner "$bin/psql" -h "$socket_dir" -U "$PG_USER" -d postgres -tAc \
    "SELECT 1 FROM pg_database WHERE datname = '$db'")"
  [ "$exists" = 1 ] || as_db_owner "$bin/createdb" -h "$socket_dir" -U "$PG_USER" "$db"
done

if ! mlflow_pid >/dev/null; then
  . "$root/launch/env.sh" requirements.txt  # the pinned venv: mlflow and the psycopg driver
  port="${ANKH3_MLFLOW_PORT:-$(mlflow_port)}"
  if [ -z "$port" ] || ! python3 -c "import socket, sys; socket.socket().bind(('127.0.0.1', int(sys.argv[1])))" "$port" 2>/dev/null; then
    port="$(python3 -c "import socket; s = socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])")"
  fi
  echo "$port" >"$dir/mlflow.port"
  mkdir -p "$dir/artifacts"
  # setsid: the server leads its own process group, so `down` stops it and its workers and nothing else
  setsid mlflow server --backend-store-uri "$(db_url mlflow)" --artifacts-destination "$dir/artifacts" \
    --host 127.0.0.1 --port "$port" --workers 2 >"$dir/mlflow.log" 2>&1 </dev/null &
  echo $! >"$mlflow_pid_file"
  say "mlflow server starting on http://127.0.0.1:$port (first start creates its tables: up to a minute)"
fi
for _ in $(seq 600); do
  mlflow_healthy && break
  mlflow_pid >/dev/null || fail "the mlflow server exited; the end of $dir/mlflow.log: $(tail -n 3 "$dir/mlflow.log" | tr '\n' ' ')"
  sleep 0.5
done
mlflow_healthy || fail "the mlflow server did not answer within 5 minutes; see $dir/mlflow.log"
print_exports | tee "$dir/env"
