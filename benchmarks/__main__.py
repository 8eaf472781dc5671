"""`make bench`: run every benchmark and print its ratios."""

import sys

from benchmarks import checkpoint_io, data_prefetch, recovery, reshard, resume_verify, scaler


def main() -> int:
    reshard.main()
    checkpoint_io.main()
    recovery.main()
    resume_verify.main()
    data_prefetch.main()
    scaler.main()
    return 0


if __name__ == "__main__":
    sys.exit(main())
