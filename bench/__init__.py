"""Benchmarks for fgjax: ``python -m bench.NAME --help``; results are JSON files."""
