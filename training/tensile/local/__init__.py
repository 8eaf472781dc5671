"""Several nodes on one host, for the demo, the tests and the benchmarks, and the stand-in
metadata server. Nothing in a real run imports it: only the CLI's `demo` command, the tests and
the benchmarks do."""
