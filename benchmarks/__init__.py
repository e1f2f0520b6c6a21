"""Benchmarks: cost ratios against hand-written metrics and the alternatives, in one run."""
