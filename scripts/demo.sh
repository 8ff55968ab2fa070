#!/usr/bin/env bash
# The main job: the example workflow, then onboarding a customer and provisioning its package
# into the customer's accounts against the local AWS emulator (moto), with status and audit
# checks. Slack messages are printed on the console. State goes to .landfall/ (ignored by git).
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --quiet
landfall=target/debug/landfall
stamp=$(date +%Y%m%d%H%M%S)

echo "==> landfall validate"
"$landfall" validate examples/hello.yaml workflows/*.yaml
echo
echo "==> landfall run examples/hello.yaml --input examples/hello-input.yaml"
"$landfall" run examples/hello.yaml --input examples/hello-input.yaml --run-id "hello-$stamp"
echo

echo "==> starting the AWS emulator (moto on 127.0.0.1)"
emulator_dir=.landfall/demo-emulator
scripts/aws-emulator.sh setup
eval "$(scripts/aws-emulator.sh start "$emulator_dir")"
trap 'scripts/aws-emulator.sh stop "$emulator_dir"' EXIT
echo "    AWS_ENDPOINT_URL=$AWS_ENDPOINT_URL"
echo
echo "==> landfall render examples/customers/acme.yaml (what reviewers look at)"
"$landfall" render examples/customers/acme.yaml --out ".landfall/render-acme-$stamp"
echo
echo "==> landfall run workflows/onboarding.yaml --input examples/customers/acme.yaml"
"$landfall" run workflows/onboarding.yaml --input examples/customers/acme.yaml --run-id "onboard-acme-$stamp"
echo
echo "==> landfall run workflows/provisioning.yaml --set package=acme-baseline@latest --set customer=acme"
# The emulator finishes stacks at once; a shorter first look keeps the demo quick.
"$landfall" run workflows/provisioning.yaml --set package=acme-baseline@latest --set customer=acme \
  --set poll_initial=2s --set 'stakeholders=["#acme-onboarding"]' --run-id "provision-acme-$stamp"
echo
echo "==> landfall run workflows/provisioning.yaml … again: nothing changes"
"$landfall" run workflows/provisioning.yaml --set package=acme-baseline@latest --set customer=acme \
  --set poll_initial=2s --run-id "provision-acme-again-$stamp"
echo
echo "==> landfall status"
"$landfall" status --limit 5
echo
echo "==> landfall packages list"
"$landfall" packages list
echo
echo "==> landfall audit onboard-acme-$stamp --verify"
"$landfall" audit "onboard-acme-$stamp" --verify
echo
echo "==> landfall audit provision-acme-$stamp --verify"
"$landfall" audit "provision-acme-$stamp" --verify
