#!/usr/bin/env bash
# Fleet scale, side by side in one run (BENCHMARKS.md, "Fleet scale"): onboarding a customer
# with 1 account and with 20, then provisioning its package into 1 account × 1 region and into
# 20 accounts × 2 regions (all at once, and with the workflow's canary first), on the emulator with account creation taking
# EMULATOR_ACCOUNT_DELAY seconds (3 unless set). Release build; one emulator, reset between
# runs; each run in a fresh state file. Prints one line per run and the two ratios.
#
#   scripts/bench-fleet.sh            # BENCH_ROUNDS=1 by default
set -euo pipefail
cd "$(dirname "$0")/.."

export EMULATOR_ACCOUNT_DELAY="${EMULATOR_ACCOUNT_DELAY:-3}"
# 20 member accounts and the management account, twice over (resets clear the organization).
export EMULATOR_ACCOUNT_QUOTA="${EMULATOR_ACCOUNT_QUOTA:-50}"
rounds="${BENCH_ROUNDS:-1}"

cargo build --quiet --release
landfall=target/release/landfall
work=$(mktemp -d)
emulator_dir="$work/emulator"
scripts/aws-emulator.sh setup
eval "$(scripts/aws-emulator.sh start "$emulator_dir" | grep '^export ')"
trap 'scripts/aws-emulator.sh stop "$emulator_dir" >/dev/null; rm -rf "$work"' EXIT

# A customer with N accounts and regions R (the example customer's other requirements).
customer() {
  local n=$1 regions=$2 file="$work/customer-$1.yaml"
  {
    echo "customer: fleet"
    echo "display_name: Fleet"
    echo "contact_email: cloud@fleet.example"
    echo "accounts:"
    for i in $(seq 1 "$n"); do
      echo "  - { name: fleet-$i, email: aws+fleet-$i@fleet.example, environment: development }"
    done
    echo "regions: $regions"
    echo "network: { cidr: 10.20.0.0/16, availability_zones: 2, nat_gateways: single }"
    echo "compliance: [baseline]"
  } > "$file"
  echo "$file"
}

seconds() { date +%s.%N; }

# Onboards N accounts with regions R into a fresh organization and state file; prints the
# onboarding's wall time and leaves the state for provisioning.
onboard() {
  local n=$1 regions=$2 db=$3
  scripts/aws-emulator.sh reset "$emulator_dir" >/dev/null
  local file
  file=$(customer "$n" "$regions")
  local t0 t1
  t0=$(seconds)
  "$landfall" -q --db "$db" run workflows/onboarding.yaml --input "$file" --run-id "onboard-$n" >/dev/null
  t1=$(seconds)
  echo "$t1 - $t0" | bc
}

provision() {
  local db=$1 id=$2 canary=$3
  local t0 t1
  t0=$(seconds)
  "$landfall" -q --db "$db" run workflows/provisioning.yaml --set package=fleet-baseline@latest \
    --set customer=fleet --set poll_initial=1s --set "canary=$canary" --run-id "$id" >/dev/null
  t1=$(seconds)
  echo "$t1 - $t0" | bc
}

echo "EMULATOR_ACCOUNT_DELAY=$EMULATOR_ACCOUNT_DELAY  rounds=$rounds  commit=$(git rev-parse --short HEAD)"
# Warm-up, not measured: moto imports each service's Python modules on first use (~1 s),
# which a long-running emulator (or AWS) does not charge to any one run.
onboard 1 "[us-east-1]" "$work/warm.redb" >/dev/null
provision "$work/warm.redb" warm-up true >/dev/null
for r in $(seq 1 "$rounds"); do
  on1=$(onboard 1 "[us-east-1]" "$work/one-$r.redb")
  pr1=$(provision "$work/one-$r.redb" "provision-1x1-$r" true)
  on20=$(onboard 20 "[us-east-1, eu-west-1]" "$work/twenty-$r.redb")
  pr20=$(provision "$work/twenty-$r.redb" "provision-20x2-$r" false)
  # Again into a fresh organization, with the canary first (the workflow's default).
  onboard 20 "[us-east-1, eu-west-1]" "$work/canary-$r.redb" >/dev/null
  pr20c=$(provision "$work/canary-$r.redb" "provision-20x2-canary-$r" true)
  printf 'round %s  onboarding 1 account %6.1f s  20 accounts %6.1f s  (%.2fx)\n' \
    "$r" "$on1" "$on20" "$(echo "$on20 / $on1" | bc -l)"
  printf 'round %s  provisioning 1x1      %6.1f s  20x2        %6.1f s  (%.2fx)  with canary %6.1f s  (%.2fx)\n' \
    "$r" "$pr1" "$pr20" "$(echo "$pr20 / $pr1" | bc -l)" "$pr20c" "$(echo "$pr20c / $pr1" | bc -l)"
done
