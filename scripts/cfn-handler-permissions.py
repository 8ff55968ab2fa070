#!/usr/bin/env python3
"""Writes steps/testdata/cfn-handler-permissions.json: for each resource type of the deployer's
table (steps/src/aws/iam.rs, ACTIONS), the IAM permissions its CloudFormation handlers need, as
AWS's resource provider schemas state them (`handlers.<create|read|update|delete|list>.permissions`).

The schemas come with cfn-lint (pinned in scripts/requirements-emulator.txt), which bundles
AWS's CloudFormation registry schemas; this is the test oracle of property 18, independent of
the table it checks. Run after `scripts/aws-emulator.sh setup`:

    .venv/bin/python scripts/cfn-handler-permissions.py
"""
import glob
import importlib.metadata
import json
import os
import re
import sys

root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
src = open(os.path.join(root, "steps/src/aws/iam.rs")).read()
start = src.index("pub const ACTIONS")
table = src[start:src.index("];", start)]
types = sorted(set(re.findall(r'"(AWS::[A-Za-z0-9:]+)"', table)))

import cfnlint  # noqa: E402

schemas = os.path.join(os.path.dirname(cfnlint.__file__), "data/schemas/resources")
found = {}
for path in glob.glob(os.path.join(schemas, "*.json")):
    try:
        doc = json.load(open(path))
    except (OSError, ValueError):
        continue
    if doc.get("typeName") in types:
        handlers = doc.get("handlers", {})
        found[doc["typeName"]] = {
            k: sorted(handlers.get(k, {}).get("permissions", []))
            for k in ("create", "read", "update", "delete", "list")
        }
missing = [t for t in types if t not in found]
if missing:
    sys.exit(f"no schema for {missing}")
out = {
    "_source": f"cfn-lint {importlib.metadata.version('cfn-lint')}, data/schemas/resources "
    "(AWS CloudFormation resource provider schemas, handlers.*.permissions)",
    "types": dict(sorted(found.items())),
}
dest = os.path.join(root, "steps/testdata/cfn-handler-permissions.json")
with open(dest, "w") as f:
    json.dump(out, f, indent=1)
    f.write("\n")
print(f"wrote {len(found)} types to {os.path.relpath(dest, root)}")
