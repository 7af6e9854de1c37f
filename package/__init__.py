"""stagesync: keep a staging MongoDB in sync with production through change streams.

This folder is only the root of the import package. The rooms live at the repository's top
level, as the project was specified (`settings/`, `watcher/`, `tasks/`, ...), and pyproject.toml
maps each of them into this package (`tool.setuptools.package-dir`): `stagesync.settings`,
`stagesync.watcher`, `stagesync.tasks`, ... so that installing stagesync puts exactly one
top-level name, `stagesync`, into site-packages.
"""
