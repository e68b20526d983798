"""Benchmarks: each prints JSON on stdout (see BENCHMARKS.md)."""
