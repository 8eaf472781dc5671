"""`make bench`: run every benchmark and print its ratios."""

import sys

from benchmarks import checkpoint_io, recovery, reshard


def main() -> int:
    reshard.main()
    checkpoint_io.main()
    recovery.main()
    return 0


if __name__ == "__main__":
    sys.exit(main())
