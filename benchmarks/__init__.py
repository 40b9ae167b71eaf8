"""Benchmarks: scripts that print tables (and save plots), never pytest tests."""
