"""Pure rules: no I/O, importing only `settings`."""
