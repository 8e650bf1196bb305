"""Benchmark harness for the segmentation pipeline (issue 4): ``python -m benchmarks.run``."""
