"""The stagesync command line and its local-server helpers."""
