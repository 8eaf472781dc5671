"""Which AWS resource types take `tags`: read once from the installed pulumi-aws sources into
aws_taggable_types.txt, so the pack knows a resource is taggable even when its tags are missing.

Regenerate after bumping pulumi-aws: `python -m policies.taggable > policies/aws_taggable_types.txt`
(a test fails while the file and the installed pulumi-aws disagree).
"""

from __future__ import annotations

import re
import sys
from functools import lru_cache
from pathlib import Path

LIST_FILE = Path(__file__).resolve().parent / "aws_taggable_types.txt"
_TOKEN = re.compile(r"super\(\w+, __self__\).__init__\(\s*'(aws:[^']+)'")
_TAGS_INPUT = '__props__.__dict__["tags"] = tags'


def generate() -> list[str]:
    """Type tokens of every pulumi-aws resource whose inputs include `tags` (sorted)."""
    import pulumi_aws

    root = Path(pulumi_aws.__file__).resolve().parent
    taggable = set()
    for source in root.rglob("*.py"):
        text = source.read_text()
        if _TAGS_INPUT in text:
            taggable.update(_TOKEN.findall(text))
    return sorted(taggable)


@lru_cache(maxsize=1)
def taggable_types() -> frozenset[str]:
    lines = LIST_FILE.read_text().splitlines()
    return frozenset(line for line in lines if line and not line.startswith("#"))


def main() -> int:
    import importlib.metadata

    version = importlib.metadata.version("pulumi-aws")
    print(f"# AWS resource types with a `tags` input, from pulumi-aws {version} (python -m policies.taggable)")
    print("\n".join(generate()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
