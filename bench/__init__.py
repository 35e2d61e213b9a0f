"""Benchmarks: each prints a table and ends with one JSON line (ratios against a peer run in the
same process, never absolute thresholds)."""
