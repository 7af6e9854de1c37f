"""The apply path: one version, one production read, one staging read, one bulk write."""
