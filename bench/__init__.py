"""Benchmarks for stagesync: workload, baselines, delay proxy, runner (`python -m bench.run`).

Not part of the installed package: run from the repository root.
"""
