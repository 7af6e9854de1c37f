"""The merge rules: pure functions with no I/O (paths, keys, plans, PII masking, `_id` ranges).

Below the watcher and the tasks, importing nothing but `settings`, so every side (the apply
path, the resync, the dry run, `check`, `verify`) decides by the same rules.
"""
