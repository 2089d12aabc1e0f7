"""Benchmarks (``make bench``): every scenario in one run, on the same machine, so ratios hold."""
