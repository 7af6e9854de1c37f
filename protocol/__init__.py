"""What the watcher, the workers and the CLI agree on: every name and the queue routing.

Below both sides, importing nothing but `settings`: task, queue and Redis key names, state
collections, index names, error codes and the done-report format are declared once here.
"""
