"""Benchmarks: ours against a baseline in the same run, on the embedded PostgreSQL.

`python -m bench [--quick] [--only NAME]` (or `make bench` / `make bench-quick`) runs every entry
module in `bench/entries/`, prints a table and merges the figures into `bench/results.json`.
"""
