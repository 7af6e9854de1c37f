"""Help text fit for daily use: on/off flags without a value placeholder, arguments by name.

Typer (0.29, with its vendored click) prints a type placeholder for every option, flags
included (`--json <bool>`, even `--help <bool>`), and a required argument as `{name}` on the
usage line. A flag takes no value and `{name}` reads like a template left unfilled, so the
`stagesync` commands use these classes: flags show no placeholder, and the usage line names
arguments the way man pages do (`NAME`, `[RATE]`). Everything else is Typer's own rendering.
"""

from __future__ import annotations

from typing import Any

import typer
from typer.core import TyperArgument, TyperCommand, TyperGroup, TyperOption


def _without_flag_placeholders(params: list[Any]) -> list[Any]:
    """An empty metavar is what Typer's rich help prints in the type column of a flag."""
    for param in params:
        if isinstance(param, TyperOption) and (param.is_flag or param.count) \
                and param.metavar is None:
            param.metavar = ""
    return params


def _usage_pieces(command: Any, ctx: Any) -> list[str]:
    pieces = [command.options_metavar] if command.options_metavar else []
    for param in command.get_params(ctx):
        if isinstance(param, TyperArgument):
            name = (param.metavar or param.name or "").upper()
            name = name if param.required else f"[{name}]"
            pieces.append(name + ("..." if param.nargs != 1 else ""))
        else:
            pieces.extend(param.get_usage_pieces(ctx))
    return pieces


class Command(TyperCommand):
    """A command whose help shows flags bare and arguments by name."""

    def get_params(self, ctx: Any) -> list[Any]:
        return _without_flag_placeholders(super().get_params(ctx))

    def collect_usage_pieces(self, ctx: Any) -> list[str]:
        return _usage_pieces(self, ctx)


class Group(TyperGroup):
    """A group (`stagesync`, `stagesync dlq`) whose own --help shows no placeholder."""

    def get_params(self, ctx: Any) -> list[Any]:
        return _without_flag_placeholders(super().get_params(ctx))


class Typer(typer.Typer):
    """`typer.Typer` whose commands and groups default to the classes above."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("cls", Group)
        super().__init__(**kwargs)

    def command(self, *args: Any, **kwargs: Any) -> Any:
        kwargs.setdefault("cls", Command)
        return super().command(*args, **kwargs)
