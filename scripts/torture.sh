#!/usr/bin/env bash
# The crash-and-fault harness, full length: onboarding and provisioning of three customers (two
# at a time) and an exec workflow through the strict AWS layer, `kill -9` at random instants,
# compared with the same work without kills (tests/it/torture.rs says what is checked).
#
#   scripts/torture.sh [KILLS] [SEED]     # defaults: 200 kills, seed 1
#
# Knobs: LANDFALL_TORTURE_FAULTS (share of AWS calls faulted, default 0.25),
# LANDFALL_TORTURE_ACCOUNT_DELAY (seconds an account takes to create, default 2).
# Prints one TORTURE line of figures (the source of RELIABILITY.md); exits non-zero when a
# check fails. CI runs the short version (the same test with its defaults) in scripts/test.sh.
set -euo pipefail
cd "$(dirname "$0")/.."

export LANDFALL_TORTURE_KILLS="${1:-200}"
export LANDFALL_TORTURE_SEED="${2:-1}"
export LANDFALL_TORTURE_FAULTS="${LANDFALL_TORTURE_FAULTS:-0.25}"
export LANDFALL_TORTURE_ACCOUNT_DELAY="${LANDFALL_TORTURE_ACCOUNT_DELAY:-2}"

scripts/aws-emulator.sh setup
log=$(mktemp)
trap 'rm -f "$log"' EXIT
status=0
cargo test --test it -- \
  torture::kill_9_at_random_instants_under_faults_leaves_the_state_of_an_uninterrupted_run \
  --exact --nocapture 2>&1 | tee "$log" || status=$?
echo
grep '^TORTURE ' "$log" || echo "no figures: the harness stopped before its report" >&2
exit "$status"
