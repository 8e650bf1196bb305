"""Benchmark of rules for choosing k on planted tables: ``python -m benchmarks.k_selection [--quick]``."""
