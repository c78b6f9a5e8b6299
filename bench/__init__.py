"""Benchmarks: speed as ratios against a reference run in the same process (these machines are noisy)."""
