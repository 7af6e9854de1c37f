"""Reads production: change streams, micro-batches, checkpoints, the safety guard."""
