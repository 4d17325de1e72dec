"""Timing runs of the product's own code paths; numbers go to docs/benchmarks.md, never into tests."""
