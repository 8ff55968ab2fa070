#!/usr/bin/env bash
# The local AWS: moto behind Landfall's strict AWS layer (strict-aws/), for demos and tests.
#
#   scripts/aws-emulator.sh setup            create .venv/ with the pinned moto and cfn-lint, and
#                                            build the strict layer
#   scripts/aws-emulator.sh start [DIR]      start moto and the strict layer in front of it on
#                                            free 127.0.0.1 ports, wait until they answer, print
#                                            the environment to export (AWS_ENDPOINT_URL is the
#                                            strict layer) and the layer's knobs
#   scripts/aws-emulator.sh env [DIR]        print the environment again
#   scripts/aws-emulator.sh reset [DIR]      clear all emulated AWS state
#   scripts/aws-emulator.sh stop [DIR]       stop both
#
# DIR (default .landfall/emulator) holds the pids, ports and logs, so several emulators can run
# side by side (each end-to-end test starts its own).
#
# The strict layer enforces what AWS enforces and moto does not (docs/aws-fidelity.md). Its
# knobs, read by `start` from the environment (defaults keep tests quick, quotas strict):
#   EMULATOR_FAULT_RATE     share of calls (0-1) answered by throttling, 5xx or a reset    (0)
#   EMULATOR_ACCOUNT_DELAY  seconds CreateAccount stays IN_PROGRESS                        (0.8)
#   EMULATOR_ROLE_DELAY     seconds before a new IAM role can be assumed                   (1)
#   EMULATOR_ACCOUNT_QUOTA  accounts the organization may hold                             (10)
#   EMULATOR_SEED           seed of the fault dice                                         (1)
#   EMULATOR_CONFLICT_RATE  chance (0-1) that overlapping organization writes conflict      (1)
#   EMULATOR_WRITE_LATENCY  seconds each organization write takes                          (0.01)
#   EMULATOR_FINALIZE_DELAY seconds after CreateOrganization that CreateAccount must wait   (0.5)
#   EMULATOR_STRICT=0       no strict layer: plain moto (to compare; proves little)
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

strict_bin() { echo "${CARGO_TARGET_DIR:-$root/target}/debug/landfall-strict-aws"; }

build_strict() {
  (cd "$root" && cargo build --quiet -p landfall-strict-aws) >&2
}

state_dir() { echo "${1:-$root/.landfall/emulator}"; }

free_port() {
  "$venv/bin/python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

curl_knobs() {
  "$venv/bin/python" -c "import urllib.request; print(urllib.request.urlopen('http://127.0.0.1:$1/strict-aws/knobs', timeout=2).read().decode())" 2>/dev/null || echo '(not answering)'
}

print_env() {
  local port
  port=$(cat "$1/port")
  if [ -f "$1/strict-port" ]; then
    port=$(cat "$1/strict-port")
    curl_knobs "$port" | sed 's/^/# strict AWS layer knobs: /'
  fi
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
  port=$(free_port)
  # The emulator outlives this script; `stop` (or the test harness) ends it.
  # AWS-managed IAM policies (ReadOnlyAccess, …) exist in every real account; moto loads them
  # only when asked (scripts/moto_server.py makes that cheap per new account; tests that
  # create many accounts and need no IAM may still set MOTO_IAM_LOAD_MANAGED_POLICIES=false).
  # Landfall's templates launch no instances, so moto's catalogue of public AMIs (loaded for
  # every account and region, ~0.1 s of CPU each) is left out.
  MOTO_EC2_LOAD_DEFAULT_AMIS="${MOTO_EC2_LOAD_DEFAULT_AMIS:-false}" \
  MOTO_IAM_LOAD_MANAGED_POLICIES="${MOTO_IAM_LOAD_MANAGED_POLICIES:-true}" nohup "$venv/bin/python" "$root/scripts/moto_server.py" -H 127.0.0.1 -p "$port" > "$dir/log" 2>&1 &
  echo $! > "$dir/pid"
  echo "$port" > "$dir/port"
  for _ in $(seq 1 150); do
    if "$venv/bin/python" -c "import urllib.request,sys; urllib.request.urlopen('http://127.0.0.1:$port/moto-api/data.json', timeout=1)" 2>/dev/null; then
      start_strict "$dir" "$port"
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

# The strict layer in front of moto on $2; its port goes to DIR/strict-port.
start_strict() {
  local dir="$1" upstream="$2"
  rm -f "$dir/strict-port" "$dir/strict-pid"
  if [ "${EMULATOR_STRICT:-1}" = "0" ]; then
    return 0
  fi
  local bin
  bin=$(strict_bin)
  if [ ! -x "$bin" ]; then
    build_strict
  fi
  local port
  port=$(free_port)
  nohup "$bin" --port "$port" --upstream "http://127.0.0.1:$upstream" > "$dir/strict-log" 2>&1 &
  echo $! > "$dir/strict-pid"
  for _ in $(seq 1 100); do
    if "$venv/bin/python" -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$port/strict-aws/knobs', timeout=1)" 2>/dev/null; then
      echo "$port" > "$dir/strict-port"
      return 0
    fi
    if ! kill -0 "$(cat "$dir/strict-pid")" 2>/dev/null; then
      echo "error: the strict AWS layer exited; its log:" >&2
      cat "$dir/strict-log" >&2
      return 1
    fi
    sleep 0.05
  done
  echo "error: the strict AWS layer did not answer on port $port within 5 s (log: $dir/strict-log)" >&2
  return 1
}

stop() {
  local dir
  dir=$(state_dir "${1:-}")
  if [ -f "$dir/strict-pid" ]; then
    kill "$(cat "$dir/strict-pid")" 2>/dev/null || true
    rm -f "$dir/strict-pid" "$dir/strict-port"
  fi
  if [ -f "$dir/pid" ]; then
    kill "$(cat "$dir/pid")" 2>/dev/null || true
    rm -f "$dir/pid" "$dir/port"
  fi
}

reset() {
  local dir
  dir=$(state_dir "${1:-}")
  local port
  port=$(cat "$dir/port")
  # Through the strict layer when there is one, so it forgets its own bookkeeping too.
  if [ -f "$dir/strict-port" ]; then port=$(cat "$dir/strict-port"); fi
  "$venv/bin/python" -c "import urllib.request; urllib.request.urlopen(urllib.request.Request('http://127.0.0.1:$port/moto-api/reset', method='POST'), timeout=5)"
}

cmd="${1:-}"
shift || true
case "$cmd" in
  setup) setup; build_strict ;;
  start) start "$@" ;;
  env) print_env "$(state_dir "${1:-}")" ;;
  reset) reset "$@" ;;
  stop) stop "$@" ;;
  *) sed -n '2,30p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
esac
