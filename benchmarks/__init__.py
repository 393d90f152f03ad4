"""Benchmarks that time the same public functions users call."""
