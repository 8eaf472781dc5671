"""Security rules: no `*` actions on `*` resources in IAM policies the stack creates; pod
identities scoped to one namespace and service account; EKS secrets encrypted with KMS; no
0.0.0.0/0 access to the API endpoint in the configured environments (prod)."""

from __future__ import annotations

import json
import re
from typing import Any, Mapping

from policies.framework import MISSING, Report, Resource, Rule, contains_unknown, dig, is_unknown, label

POLICY_DOCUMENT_PROPS = {
    "aws:iam/policy:Policy": "policy", "aws:iam/rolePolicy:RolePolicy": "policy",
    "aws:iam/userPolicy:UserPolicy": "policy", "aws:iam/groupPolicy:GroupPolicy": "policy",
}
ROLE = "aws:iam/role:Role"
POD_IDENTITY = "aws:eks/podIdentityAssociation:PodIdentityAssociation"
EKS_CLUSTER = "aws:eks/cluster:Cluster"
ENVIRONMENT_TAG = "tensile.io/environment"
OPEN_CIDRS = ("0.0.0.0/0", "::/0")


def _as_list(value: Any) -> list:
    return [value] if isinstance(value, (str, Mapping)) else list(value) if isinstance(value, list) else []


def _document(text: Any) -> Any:
    if is_unknown(text):
        return text
    try:
        return json.loads(text) if isinstance(text, str) else text
    except ValueError:
        return MISSING


def wildcard_statements(document: Any) -> list[str]:
    """Sids (or indexes) of Allow statements granting every action on every resource."""
    found = []
    for i, s in enumerate(_as_list(dig(document, "Statement"))):
        actions, resources = _as_list(dig(s, "Action")), _as_list(dig(s, "Resource"))
        if dig(s, "Effect") == "Allow" and set(actions) & {"*", "*:*"} and "*" in resources:
            found.append(str(dig(s, "Sid")) if dig(s, "Sid") is not MISSING else f"Statement[{i}]")
    return found


def check_iam_wildcards(resource: Resource, config: Mapping, report: Report) -> None:
    documents: list[tuple[str, Any]] = []
    if resource.type in POLICY_DOCUMENT_PROPS:
        prop = POLICY_DOCUMENT_PROPS[resource.type]
        documents.append((prop, dig(resource.props, prop)))
    elif resource.type == ROLE:
        inline = dig(resource.props, "inlinePolicies")
        if is_unknown(inline):
            documents.append(("inlinePolicies", inline))
        for i, p in enumerate(inline if isinstance(inline, list) else []):
            documents.append((f"inlinePolicies[{i}].policy", dig(p, "policy")))
    for where, text in documents:
        document = _document(text)
        if is_unknown(document) or contains_unknown(document):
            report.unknown(f"{label(resource)}: {where}")
        elif document is not MISSING and (found := wildcard_statements(document)):
            report.violation(f"{label(resource)}: {where} allows every action on every resource in "
                             f"{', '.join(found)}; grant the actions and resources it needs")


SERVICE_ACCOUNT_SUBJECT = re.compile(r"system:serviceaccount:[^:*?]+:[^:*?]+")


def _oidc_trust_problems(document: Any) -> list[str] | None:
    """Problems with an IRSA trust policy (None if some value is unknown)."""
    problems = []
    for i, s in enumerate(_as_list(dig(document, "Statement"))):
        federated = dig(s, "Principal", "Federated")
        if is_unknown(federated):
            return None
        if not (isinstance(federated, str) and "oidc-provider" in federated):
            continue
        condition = dig(s, "Condition")
        if contains_unknown(condition):
            return None
        equals, like = dig(condition, "StringEquals"), dig(condition, "StringLike")
        subjects = [x for key, v in (equals.items() if isinstance(equals, Mapping) else ())
                    if key.endswith(":sub") for x in _as_list(v)]
        loose = [key for key in (like if isinstance(like, Mapping) else ()) if key.endswith(":sub")]
        if loose or len(subjects) != 1 or not SERVICE_ACCOUNT_SUBJECT.fullmatch(str(subjects[0])):
            problems.append(f"Statement[{i}] trusts the cluster's OIDC provider for "
                            f"{subjects or ('a StringLike pattern' if loose else 'any subject')}; use StringEquals on "
                            f":sub with exactly one system:serviceaccount:NAMESPACE:SERVICE_ACCOUNT")
    return problems


def check_pod_identity(resource: Resource, config: Mapping, report: Report) -> None:
    if resource.type == POD_IDENTITY:
        for field in ("namespace", "serviceAccount"):
            value = dig(resource.props, field)
            if is_unknown(value):
                report.unknown(f"{label(resource)}: {field}")
            elif not isinstance(value, str) or not value or any(c in value for c in "*?"):
                report.violation(f"{label(resource)}: {field} must name exactly one, got {value!r}")
    elif resource.type == ROLE:
        document = _document(dig(resource.props, "assumeRolePolicy"))
        if is_unknown(document):
            report.unknown(f"{label(resource)}: assumeRolePolicy")
            return
        problems = _oidc_trust_problems(document) if document is not MISSING else []
        if problems is None:
            report.unknown(f"{label(resource)}: assumeRolePolicy's OIDC conditions")
        for problem in problems or []:
            report.violation(f"{label(resource)}: {problem}")


def check_secrets_encryption(resource: Resource, config: Mapping, report: Report) -> None:
    encryption = dig(resource.props, "encryptionConfig")
    resources, key = dig(encryption, "resources"), dig(encryption, "provider", "keyArn")
    if is_unknown(encryption) or is_unknown(resources) or contains_unknown(resources):
        report.unknown(f"{label(resource)}: encryptionConfig")
        return
    if not (isinstance(resources, list) and "secrets" in resources) or key is MISSING:
        report.violation(f"{label(resource)}: encryptionConfig must encrypt `secrets` with a KMS key "
                         f"(resources {None if resources is MISSING else resources}, key "
                         f"{'set' if key is not MISSING else 'missing'})")
    # A key ARN unknown at preview is still a key: the KMS key is created by the stack.


def check_api_access(resource: Resource, config: Mapping, report: Report) -> None:
    environment = dig(resource.props, "tags", ENVIRONMENT_TAG)
    if is_unknown(environment) or is_unknown(dig(resource.props, "tags")):
        report.unknown(f"{label(resource)}: tags.{ENVIRONMENT_TAG}")
        return
    if environment is not MISSING and environment not in config["environments"]:
        return  # untagged: no environment exempts it (fail closed)
    environment = f"an untagged cluster (no {ENVIRONMENT_TAG})" if environment is MISSING else environment
    vpc = dig(resource.props, "vpcConfig")
    public, cidrs = dig(vpc, "endpointPublicAccess"), dig(vpc, "publicAccessCidrs")
    if is_unknown(vpc) or is_unknown(public) or is_unknown(cidrs) or contains_unknown(cidrs):
        report.unknown(f"{label(resource)}: vpcConfig endpoint access")
        return
    if public is False:
        return
    # EKS's defaults: public access on, from 0.0.0.0/0.
    effective = ["0.0.0.0/0"] if cidrs is MISSING or not cidrs else list(cidrs)
    if any(c in OPEN_CIDRS for c in effective):
        report.violation(f"{label(resource)}: in {environment} the public API endpoint must not be open to the "
                         f"internet; publicAccessCidrs {effective} (list the platform team's CIDRs or turn public "
                         f"access off)")


RULES = [
    Rule("iam-no-wildcard-admin", "IAM policies the stack creates never allow `*` actions on `*` resources.",
         "resource", check_iam_wildcards, (*POLICY_DOCUMENT_PROPS, ROLE)),
    Rule("pod-identity-scoped", "Pod identities (Pod Identity associations, IRSA trust policies) name one "
         "namespace and one service account.", "resource", check_pod_identity, (POD_IDENTITY, ROLE)),
    Rule("eks-secrets-encrypted", "EKS clusters encrypt Kubernetes secrets with a KMS key.", "resource",
         check_secrets_encryption, (EKS_CLUSTER,)),
    Rule("eks-api-not-open", "The EKS API endpoint is not open to 0.0.0.0/0 in the listed environments (or untagged).",
         "resource", check_api_access, (EKS_CLUSTER,),
         {"environments": {"type": "array", "items": {"type": "string"}, "default": ["prod"],
                           "description": f"values of the {ENVIRONMENT_TAG} tag where the rule applies"}}),
]
