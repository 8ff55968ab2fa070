#!/usr/bin/env bash
# The main job: run the example workflow end to end, show its status and verify its audit
# trail. State goes to .landfall/ in the repository (ignored by git).
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --quiet
landfall=target/debug/landfall

echo "==> landfall validate"
"$landfall" validate examples/hello.yaml
echo
echo "==> landfall run examples/hello.yaml --input examples/hello-input.yaml"
"$landfall" run examples/hello.yaml --input examples/hello-input.yaml --run-id "demo-$(date +%Y%m%d%H%M%S)" --json > .landfall-demo-run.json
run_id=$(sed -n 's/^  "run_id": "\(.*\)",$/\1/p' .landfall-demo-run.json | head -n1)
rm -f .landfall-demo-run.json
echo
echo "==> landfall status"
"$landfall" status --limit 5
echo
echo "==> landfall audit $run_id --verify"
"$landfall" audit "$run_id" --verify
