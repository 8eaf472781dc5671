"""Names on the shared file system (EFS is NFSv4.1), found without trusting its listings.

An NFS client may answer a directory listing from its cache for tens of seconds, but an open(2)
of a name asks the server (close-to-open consistency). Records numbered consecutively (commits,
epochs, ledger files, rounds) are therefore found by listing as a hint and opening past it.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path


def opens(path: Path) -> bool:
    """Whether `path` exists, asked with open(2) rather than stat or a listing."""
    try:
        os.close(os.open(path, os.O_RDONLY))
    except FileNotFoundError:
        return False
    return True


def numbered(directory: Path, name_of: Callable[[int], str], number_of: Callable[[str], int | None]) -> list[int]:
    """The numbers taken in `directory` (from 1, consecutively): the listing, then each next name
    opened until one is missing."""
    try:
        taken = sorted(n for n in map(number_of, os.listdir(directory)) if n is not None)
    except FileNotFoundError:
        taken = []
    number = taken[-1] if taken else 0
    while opens(directory / name_of(number + 1)):
        number += 1
        taken.append(number)
    return taken
