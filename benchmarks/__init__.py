"""Benchmarks that train real models (minutes to hours): run by hand, never by the test suite.

A package only so that tests/test_benchmark.py can import the benchmark's pure helpers.
"""
