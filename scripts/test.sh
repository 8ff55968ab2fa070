#!/usr/bin/env bash
# Every check CI runs: formatting, lints, unit, property, snapshot and end-to-end tests.
set -euo pipefail
cd "$(dirname "$0")/.."

export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
# Snapshot tests must fail on a mismatch, never write new snapshots, in CI and here alike.
export INSTA_UPDATE=no
export PROPTEST_CASES="${PROPTEST_CASES:-100}"

echo "==> AWS emulator (moto) and cfn-lint into .venv/"
scripts/aws-emulator.sh setup
# The PostgreSQL store's tests (and the multi-worker ones) run on a server of the project's
# own: installed here when missing, started by the first test that needs it, stopped at the
# end.
echo "==> PostgreSQL (Debian's postgresql, when missing)"
scripts/postgres.sh setup
pg_dir="${CARGO_TARGET_DIR:-target}/postgres-test"
echo "==> cargo fmt --check"
cargo fmt --all -- --check
echo "==> cargo clippy"
cargo clippy --workspace --all-targets --quiet -- -D warnings
echo "==> cargo test"
log=$(mktemp)
trap 'rm -f "$log"; scripts/postgres.sh stop "$pg_dir" || true' EXIT
cargo test --workspace --no-fail-fast 2>&1 | tee "$log"
# A run that executed no test is a broken harness, not a green build.
passed=$(grep -Eo 'test result: [a-zA-Z]+\. [0-9]+ passed' "$log" | awk '{s+=$4} END {print s+0}')
failed=$(grep -Eo '[0-9]+ failed;' "$log" | awk '{s+=$1} END {print s+0}')
echo "${passed} passed, ${failed} failed"
if [ "$passed" -eq 0 ]; then
  echo "error: no test ran" >&2
  exit 1
fi
