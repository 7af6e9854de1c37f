"""Merge rules: pure functions with no I/O (fields, keys, plans, PII)."""
