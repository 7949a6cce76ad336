"""Benchmarks: one command each, JSON out (`sop bench ...`)."""
