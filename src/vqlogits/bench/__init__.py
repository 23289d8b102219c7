"""Benchmarks. Outside the core: the core never imports this package."""
