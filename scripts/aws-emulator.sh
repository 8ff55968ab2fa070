#!/usr/bin/env bash
# The local AWS emulator (moto) for demos and tests.
#
#   scripts/aws-emulator.sh setup            create .venv/ and install the pinned moto and cfn-lint
#   scripts/aws-emulator.sh start [DIR]      start moto on a free 127.0.0.1 port, wait until it
#                                            answers, print the environment to export
#   scripts/aws-emulator.sh env [DIR]        print the environment again
#   scripts/aws-emulator.sh reset [DIR]      clear all emulated AWS state
#   scripts/aws-emulator.sh stop [DIR]       stop it
#
# DIR (default .landfall/emulator) holds the pid, port and log, so several emulators can run
# side by side (each end-to-end test starts its own).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
venv="$root/.venv"
reqs="$root/scripts/requirements-emulator.txt"

setup() {
  local stamp="$venv/.requirements.sha256"
  local want
  want=$(sha256sum "$reqs" | cut -d' ' -f1)
  if [ -x "$venv/bin/moto_server" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    return 0
  fi
  echo "Installing the AWS emulator into .venv/ (moto, cfn-lint)…" >&2
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$reqs" >&2
  echo "$want" > "$stamp"
}

state_dir() { echo "${1:-$root/.landfall/emulator}"; }

print_env() {
  local port
  port=$(cat "$1/port")
  cat <<ENV
export AWS_ENDPOINT_URL=http://127.0.0.1:$port
export AWS_ACCESS_KEY_ID=testing
export AWS_SECRET_ACCESS_KEY=testing
export AWS_REGION=us-east-1
ENV
}

start() {
  local dir
  dir=$(state_dir "${1:-}")
  mkdir -p "$dir"
  if [ -f "$dir/pid" ] && kill -0 "$(cat "$dir/pid")" 2>/dev/null; then
    print_env "$dir"
    return 0
  fi
  setup
  local port
  port=$("$venv/bin/python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()')
  # The emulator outlives this script; `stop` (or the test harness) ends it.
  # AWS-managed IAM policies (ReadOnlyAccess, …) exist in every real account; moto loads them
  # only when asked (and it costs about a second per new account; tests that create many
  # accounts and need no IAM set MOTO_IAM_LOAD_MANAGED_POLICIES=false).
  MOTO_IAM_LOAD_MANAGED_POLICIES="${MOTO_IAM_LOAD_MANAGED_POLICIES:-true}" nohup "$venv/bin/moto_server" -H 127.0.0.1 -p "$port" > "$dir/log" 2>&1 &
  echo $! > "$dir/pid"
  echo "$port" > "$dir/port"
  for _ in $(seq 1 150); do
    if "$venv/bin/python" -c "import urllib.request,sys; urllib.request.urlopen('http://127.0.0.1:$port/moto-api/data.json', timeout=1)" 2>/dev/null; then
      print_env "$dir"
      return 0
    fi
    if ! kill -0 "$(cat "$dir/pid")" 2>/dev/null; then
      echo "error: the emulator exited; its log:" >&2
      cat "$dir/log" >&2
      return 1
    fi
    sleep 0.1
  done
  echo "error: the emulator did not answer on port $port within 15 s (log: $dir/log)" >&2
  return 1
}

stop() {
  local dir
  dir=$(state_dir "${1:-}")
  if [ -f "$dir/pid" ]; then
    kill "$(cat "$dir/pid")" 2>/dev/null || true
    rm -f "$dir/pid" "$dir/port"
  fi
}

reset() {
  local dir
  dir=$(state_dir "${1:-}")
  "$venv/bin/python" -c "import urllib.request; urllib.request.urlopen(urllib.request.Request('http://127.0.0.1:$(cat "$dir/port")/moto-api/reset', method='POST'), timeout=5)"
}

cmd="${1:-}"
shift || true
case "$cmd" in
  setup) setup ;;
  start) start "$@" ;;
  env) print_env "$(state_dir "${1:-}")" ;;
  reset) reset "$@" ;;
  stop) stop "$@" ;;
  *) sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
esac
