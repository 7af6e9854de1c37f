"""Pure rules of the sync: decisions without I/O, importing only settings (and each other)."""
