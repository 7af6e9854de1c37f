"""A full resync's work: chunk bounds, copy and sweep chunks (the tasks are in `tasks.resync`)."""
