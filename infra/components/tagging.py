"""Stack tags, applied by a stack transformation so every taggable AWS resource carries them in
its own inputs (provider default tags are invisible to policy packs and to cost reports that
read resource inputs)."""

from __future__ import annotations

from typing import Any, Mapping

import pulumi

STACK_TAG = "tensile.io/stack"
ENVIRONMENT_TAG = "tensile.io/environment"
COST_CENTRE_TAG = "tensile.io/cost-centre"
MANAGED_BY_TAG = "tensile.io/managed-by"
TEAM_TAG = "tensile.io/team"


def stack_tags(*, stack: str, environment: str, cost_centre: str) -> dict[str, str]:
    return {
        STACK_TAG: stack,
        ENVIRONMENT_TAG: environment,
        COST_CENTRE_TAG: cost_centre,
        MANAGED_BY_TAG: "pulumi",
    }


def merge_tags(stack: Mapping[str, str], own: Any) -> Any:
    """Stack tags under the resource's own: a resource may add tags (team, Name) but not drop ours."""
    if own is None:
        return dict(stack)
    if isinstance(own, Mapping):
        return {**stack, **own}
    return pulumi.Output.from_input(own).apply(lambda t: {**stack, **(t or {})})


def tagging_transformation(tags: Mapping[str, str]):
    """A stack transformation adding `tags` to every AWS resource that has a `tags` input."""
    tags = dict(tags)

    def transform(args: pulumi.ResourceTransformationArgs) -> pulumi.ResourceTransformationResult | None:
        if not args.type_.startswith("aws:") or not isinstance(args.resource, pulumi.CustomResource):
            return None
        if "tags" not in args.props:
            # Not taggable (e.g. route table associations, policy attachments).
            return None
        props = dict(args.props)
        props["tags"] = merge_tags(tags, props.get("tags"))
        return pulumi.ResourceTransformationResult(props=props, opts=args.opts)

    return transform


def register(tags: Mapping[str, str]) -> None:
    """Register the tagging transformation for every resource declared after this call."""
    pulumi.runtime.register_stack_transformation(tagging_transformation(tags))
