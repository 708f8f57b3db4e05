"""Benchmarks that run against the real kernel (see bench/README.md)."""
