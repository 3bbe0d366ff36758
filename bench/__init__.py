"""Benchmarks: each module prints a summary and writes JSON under bench/results/."""
