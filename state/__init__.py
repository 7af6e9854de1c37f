"""The staging state database's stores: dead letters, versions, resync records, PII records.

What must survive a Redis wipe lives here (DESIGN, "Where state lives"). Both the watcher and
the workers read and write these stores, so they sit below both.
"""
