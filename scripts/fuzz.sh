#!/usr/bin/env bash
# Fuzzes one of Landfall's input surfaces for a while, on stable Rust (see fuzz/src/lib.rs):
#   scripts/fuzz.sh TARGET MINUTES [SEED]
# Targets: workflow-yaml workflow-toml expression requirements slack-form slack-json signature
# (`all` runs each in turn). Inputs that panic are kept in fuzz/crashes/TARGET/; exit 1 then.
set -euo pipefail
cd "$(dirname "$0")/.."
target="${1:?usage: scripts/fuzz.sh TARGET MINUTES [SEED]}"
minutes="${2:?usage: scripts/fuzz.sh TARGET MINUTES [SEED]}"
seed="${3:-0}"
cargo build --quiet --release -p landfall-fuzz
bin=target/release/landfall-fuzz
if [ "$target" = all ]; then
  status=0
  for t in workflow-yaml workflow-toml expression requirements slack-form slack-json signature; do
    "$bin" "$t" $((minutes * 60)) "$seed" || status=1
  done
  exit $status
fi
exec "$bin" "$target" $((minutes * 60)) "$seed"
