"""The commands a client sends, as pymongo's command monitoring sees them start."""

from __future__ import annotations

from typing import Any

from pymongo import monitoring


class CommandLog(monitoring.CommandListener):
    """Every command started: its name, its collection (or the command's argument) and its
    filter, kept in order. Tests count round trips or look at what a query asked."""

    def __init__(self) -> None:
        self.commands: list[tuple[str, str]] = []
        self.filters: list[dict[str, Any]] = []  # one per command, {} when it has none

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        self.commands.append((event.command_name, str(event.command.get(event.command_name))))
        self.filters.append(dict(event.command.get("filter") or {}))

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass

    def clear(self) -> None:
        self.commands.clear()
        self.filters.clear()

    def find_filters(self) -> list[dict[str, Any]]:
        return [query for (name, _), query in zip(self.commands, self.filters, strict=True)
                if name == "find"]
