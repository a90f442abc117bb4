"""Benchmarks: latency distributions and model size."""
