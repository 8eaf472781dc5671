"""The vendored Karpenter CRDs are the pinned ones and match what the program declares."""

from __future__ import annotations

import hashlib

import pytest

from infra.components import karpenter

PINNED = {"karpenter.sh_nodepools.yaml": "3bb64a20c807", "karpenter.sh_nodeclaims.yaml": "96037dc24103",
          "karpenter.k8s.aws_ec2nodeclasses.yaml": "62dec59f01c0"}


@pytest.mark.parametrize("name, digest", sorted(PINNED.items()))
def test_vendored_crd_is_byte_for_byte_the_pinned_file(name, digest):
    assert hashlib.sha256((karpenter.CRD_DIR / name).read_bytes()).hexdigest()[:12] == digest


def test_vendored_crds_serve_v1_for_the_kinds_the_program_declares():
    served = {(c["spec"]["group"], c["spec"]["names"]["kind"]): [v["name"] for v in c["spec"]["versions"] if v["served"]]
              for c in karpenter.load_crds()}
    assert served == {("karpenter.sh", "NodePool"): ["v1"], ("karpenter.sh", "NodeClaim"): ["v1"],
                      ("karpenter.k8s.aws", "EC2NodeClass"): ["v1"]}
