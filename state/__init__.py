"""The staging state database: `database.state_database` opens it, and one store per
collection owns the collection's name and its fields (checkpoints and leases, versions, dead
letters, resync records, replay jobs, pending references, rate limits, PII records,
unclassified paths, verifications, the guard's marker).

What must survive a Redis wipe lives here (DESIGN, "Where state lives"). Both the watcher and
the workers read and write these stores, so they sit below both; nothing outside this room
opens the database or names a state field (tests/unit/test_rooms.py).
"""
