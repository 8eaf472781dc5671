"""Every rule of the pack, in domain order, as CrossGuard policies."""

from __future__ import annotations

from policies import compute, cost, kubernetes, security, storage, tagging
from policies.framework import Rule, to_policy

RULES: list[Rule] = [*compute.RULES, *cost.RULES, *storage.RULES, *kubernetes.RULES, *security.RULES,
                     *tagging.RULES]
BY_NAME = {rule.name: rule for rule in RULES}
if len(BY_NAME) != len(RULES):
    raise RuntimeError("policy names must be unique: " + ", ".join(sorted(r.name for r in RULES)))
POLICIES = [to_policy(rule) for rule in RULES]
