"""Benchmarks: figures and ratios against a baseline run side by side. Never tests."""
