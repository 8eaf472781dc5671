"""The in-cluster scaler controller (`tensile scaler run`): the policy core of tensile.scaler
driving elastic Kueue Jobs through the Kubernetes API (docs/design/scaler.md).

Needs the `training[cluster]` extra (lightkube); nothing outside this package imports it.
"""
