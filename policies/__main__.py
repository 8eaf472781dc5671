"""Tensile's CrossGuard pack. The Pulumi CLI runs this directory (`python -m pulumi.policy ADDR policies`);
PolicyPack(...) starts the analyzer's gRPC server, prints its port and blocks."""

import sys
from pathlib import Path

# The CLI runs the pack with policies/ on sys.path, not the repo root; the rules import
# `policies.*` and the shared cost model `infra.cost`.
_REPO_ROOT = str(Path(__file__).resolve().parent.parent)
if _REPO_ROOT not in sys.path:
    sys.path.insert(0, _REPO_ROOT)

from pulumi_policy import EnforcementLevel, PolicyPack  # noqa: E402

from policies.pack import POLICIES  # noqa: E402

PolicyPack(name="tensile-policies", policies=POLICIES, enforcement_level=EnforcementLevel.MANDATORY)
