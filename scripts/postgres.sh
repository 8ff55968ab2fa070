#!/usr/bin/env bash
# A PostgreSQL of the project's own, for the shared store (`db = "postgres://…"`) in tests and
# on a laptop. Nothing of the machine's own PostgreSQL is used but its programs: the cluster
# lives in DIR, listens on a free 127.0.0.1 port only (no Unix socket), and asks for a password
# (generated, kept in DIR/password).
#
#   scripts/postgres.sh setup            install Debian's postgresql when its programs are
#                                        missing (apt-get; as root or through sudo)
#   scripts/postgres.sh start [DIR]      initdb into DIR/data the first time, start the server,
#                                        create the `landfall` database, print
#                                        LANDFALL_DB=postgres://… (already running: print it)
#   scripts/postgres.sh env [DIR]        print LANDFALL_DB again
#   scripts/postgres.sh stop [DIR]       stop the server (the data stays; a later start keeps
#                                        the port when it is free)
#   scripts/postgres.sh destroy [DIR]    stop it and delete DIR
#
# DIR defaults to .landfall/postgres. PostgreSQL refuses to run as root: as root the cluster
# is run by the `postgres` user the Debian package creates.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cmd="${1:-}"
dir="${2:-$root/.landfall/postgres}"

bindir() {
  local d
  for d in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r); do
    if [ -x "$d/initdb" ] && [ -x "$d/pg_ctl" ]; then
      echo "$d"
      return 0
    fi
  done
  if command -v initdb >/dev/null && command -v pg_ctl >/dev/null; then
    dirname "$(command -v initdb)"
    return 0
  fi
  return 1
}

setup() {
  if bindir >/dev/null; then
    return 0
  fi
  echo "Installing Debian's postgresql…" >&2
  local sudo=""
  if [ "$(id -u)" != 0 ]; then
    command -v sudo >/dev/null || {
      echo "postgresql is not installed and this user cannot install it: run \`apt-get install postgresql\` as root" >&2
      exit 1
    }
    sudo="sudo"
  fi
  $sudo apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends postgresql >&2
  # The package may start a cluster of its own; this project does not use it.
  bindir >/dev/null || { echo "postgresql installed, but initdb and pg_ctl were not found" >&2; exit 1; }
}

# Runs a PostgreSQL program as the user that owns the cluster.
as_owner() {
  if [ "$(id -u)" = 0 ]; then
    runuser -u postgres -- "$@"
  else
    "$@"
  fi
}

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

port_free() {
  # As the server binds it (SO_REUSEADDR): a port left in TIME_WAIT by its last life is free.
  python3 -c 'import socket, sys; s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(("127.0.0.1", int(sys.argv[1])))' "$1" 2>/dev/null
}

url() {
  echo "postgres://landfall:$(cat "$dir/password")@127.0.0.1:$(cat "$dir/port")/landfall"
}

# Where the cluster's own files live: DIR, or, when the cluster's user cannot reach DIR (root
# working in a private home directory), a directory of its own under /var/tmp named after DIR.
cluster_dir() {
  if [ "$(id -u)" != 0 ] || { [ -d "$dir" ] && runuser -u postgres -- test -w "$dir" 2>/dev/null; }; then
    echo "$dir"
    return 0
  fi
  local d
  d="/var/tmp/landfall-postgres-$(printf %s "$dir" | sha256sum | cut -c1-12)"
  mkdir -p "$d"
  chown postgres "$d"
  chmod 700 "$d"
  echo "$d"
}

running() {
  local c
  c="$(cluster_dir)"
  [ -f "$c/data/PG_VERSION" ] && as_owner "$(bindir)/pg_ctl" -D "$c/data" status >/dev/null 2>&1
}

start() {
  setup
  local bin
  bin="$(bindir)"
  mkdir -p "$dir"
  # Two callers starting the same cluster at once (test processes) take turns.
  exec 9>"$dir/.start.lock"
  flock 9
  if [ "$(id -u)" = 0 ]; then
    chown postgres "$dir"
  fi
  local c
  c="$(cluster_dir)"
  if [ ! -f "$c/data/PG_VERSION" ]; then
    umask 077
    python3 -c 'import secrets; print(secrets.token_hex(16))' > "$dir/password"
    local pwfile="$c/.pwfile"
    cp "$dir/password" "$pwfile"
    if [ "$(id -u)" = 0 ]; then
      chown postgres "$pwfile"
    fi
    as_owner "$bin/initdb" -D "$c/data" -U landfall --pwfile="$pwfile" \
      --auth=scram-sha-256 -E UTF8 --locale=C >"$dir/initdb.log" 2>&1 || {
      cat "$dir/initdb.log" >&2
      rm -f "$pwfile"
      exit 1
    }
    rm -f "$pwfile"
  fi
  if running; then
    echo "LANDFALL_DB=$(url)"
    return 0
  fi
  # The port of the last start when it is still free: URLs handed out stay good across a
  # restart.
  local port=""
  if [ -f "$dir/port" ] && port_free "$(cat "$dir/port")"; then
    port="$(cat "$dir/port")"
  else
    port="$(free_port)"
  fi
  echo "$port" > "$dir/port"
  # The server must not inherit the lock (it would hold it for its whole life).
  as_owner "$bin/pg_ctl" -D "$c/data" -l "$c/server.log" -w -t 60 \
    -o "-p $port -c listen_addresses=127.0.0.1 -c unix_socket_directories=''" start >/dev/null 9>&- || {
    tail -20 "$c/server.log" >&2 || true
    exit 1
  }
  local psql="$bin/psql"
  [ -x "$psql" ] || psql="psql"
  export PGPASSWORD
  PGPASSWORD="$(cat "$dir/password")"
  if [ -z "$("$psql" -h 127.0.0.1 -p "$port" -U landfall -d postgres -tAc "SELECT 1 FROM pg_database WHERE datname = 'landfall'")" ]; then
    "$psql" -h 127.0.0.1 -p "$port" -U landfall -d postgres -qc "CREATE DATABASE landfall" >/dev/null
  fi
  echo "LANDFALL_DB=$(url)"
}

stop() {
  if running; then
    as_owner "$(bindir)/pg_ctl" -D "$(cluster_dir)/data" -m fast -w stop >/dev/null
  fi
}

case "$cmd" in
  setup) setup ;;
  start) start ;;
  env)
    [ -f "$dir/port" ] && [ -f "$dir/password" ] || { echo "no PostgreSQL in $dir: run \`$0 start\`" >&2; exit 1; }
    echo "LANDFALL_DB=$(url)"
    ;;
  stop) stop ;;
  destroy)
    stop
    [ ! -d "$dir" ] || rm -rf "$(cluster_dir)"
    rm -rf "$dir"
    ;;
  *)
    sed -n '2,/^set -euo/p' "$0" | grep '^#' | sed 's/^# \{0,1\}//'
    [ -z "$cmd" ] || [ "$cmd" = help ] || [ "$cmd" = --help ] || exit 2
    ;;
esac
