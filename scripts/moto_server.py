"""moto's server, with two of its costs removed (started by scripts/aws-emulator.sh).

Every request asks moto's dispatcher whether its host names a moto module, and moto answers by
listing its package directory and stat-ing each entry (~200 system calls per request, about a
third of moto's CPU time while 40 targets are provisioned at once). The list never changes
while the server runs: it is read once here.

moto builds the IAM backend of every account lazily, on the first request after the account
appears (an organization's CreateAccount), and each build parses AWS's ~1,600 managed
policies again for each of the five partitions: ~0.5 s of CPU per new account, all under the
GIL, which made the emulator, not Landfall, the bottleneck of creating accounts in parallel.
Here the policy document is parsed once per process and only the `aws` partition (the only one
Landfall's tests use) loads the managed policies. Behaviour toward clients is unchanged. Tied
to moto's IAMBackend._init_aws_policies (moto is pinned in requirements-emulator.txt).
"""

import json
import sys

from moto import backends
from moto.iam import models as iam
from moto.server import main
from moto.settings import load_iam_aws_managed_policies
from moto.utilities.utils import get_partition

_parsed = None


def _init_aws_policies(self):
    global _parsed
    if not load_iam_aws_managed_policies() or get_partition(self.region_name) != "aws":
        return []
    if _parsed is None:
        _parsed = json.loads(iam.aws_managed_policies_data)
    return [
        iam.AWSManagedPolicy.from_data(name, self.account_id, self.region_name, d)
        for name, d in _parsed.items()
    ]


iam.IAMBackend._init_aws_policies = _init_aws_policies

_modules = tuple(backends.list_of_moto_modules())
backends.list_of_moto_modules = lambda: _modules

if __name__ == "__main__":
    sys.exit(main())
