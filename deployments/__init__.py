"""The two MongoDB deployments stagesync connects, seen from below both watcher and tasks.

`deployments.production` is the read-only production client (the only door to production);
`deployments.guard` refuses to run when staging is production under another name. Both the
watcher and the workers import them, so they live here rather than in either room.
"""
