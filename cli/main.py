"""The `stagesync` command line (typer). Each command is a thin shell over the rooms.

Exit codes: 0 success; 1 the command ran and found a problem (check failed, verify found
differences, status unhealthy); 2 the configuration or the command line is wrong; 3 refused
for safety (staging is production).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from deployments.in_lists import configure as configure_in_lists
from settings import CONFIG_ENV, ConfigError, Settings, load_settings
from settings.logs import configure_logging, redact_uri

app = typer.Typer(
    add_completion=False, no_args_is_help=True,
    help="Keep a staging MongoDB in sync with production through change streams.",
)
dlq_app = typer.Typer(no_args_is_help=True, help="Inspect and replay the dead-letter store.")
app.add_typer(dlq_app, name="dlq")
pii_app = typer.Typer(no_args_is_help=True, help="Personal data: find it in production, propose "
                      "the pii and allow settings.")
app.add_typer(pii_app, name="pii")
console = Console()
errors = Console(stderr=True)

ConfigOption = Annotated[
    Path | None,
    typer.Option("--config", "-c", help=f"YAML configuration (default: ${CONFIG_ENV} or "
                 "./stagesync.yaml)", show_default=False),
]


def settings_from(config: Path | None) -> Settings:
    """Load the configuration, and make Celery (configured lazily) read the same file."""
    if config is not None:
        os.environ[CONFIG_ENV] = str(config.resolve())
    try:
        settings = load_settings(config)
    except ConfigError as error:
        errors.print(f"[red]stagesync:[/red] {error}", highlight=False)
        raise typer.Exit(2) from None
    configure_in_lists(settings.in_list_max)
    return settings


def fail(message: str, code: int = 1) -> typer.Exit:
    errors.print(f"[red]stagesync:[/red] {redact_uri(message)}", highlight=False)
    return typer.Exit(code)


@app.command()
def check(config: ConfigOption = None) -> None:
    """Validate the configuration and reach production, staging and Redis."""
    from cli.check import run_check

    settings = settings_from(config)
    raise typer.Exit(run_check(settings, console))


@app.command()
def watch(
    config: ConfigOption = None,
    collection: Annotated[list[str] | None, typer.Option(
        "--collection", help="Watch only this collection (repeatable).")] = None,
    dry_run: Annotated[bool, typer.Option(
        "--dry-run", help="Compute the merges and print them instead of writing.")] = False,
) -> None:
    """Stream production's changes into the queues until SIGTERM/SIGINT."""
    settings = settings_from(config)
    configure_logging("watcher")
    names = collection or []
    for name in names:
        _known(settings, name)
    if dry_run:
        from watcher.dry_run import run_dry

        raise typer.Exit(run_dry(settings, names, console))
    from deployments.guard import SameDeploymentError
    from tasks.indexes import IndexConflictError
    from watcher.runner import run_watcher

    try:
        raise typer.Exit(run_watcher(settings, names))
    except SameDeploymentError as error:
        raise fail(str(error), 3) from None
    except IndexConflictError as error:
        raise fail(str(error), 1) from None


@app.command()
def resync(
    name: Annotated[str, typer.Argument(help="Collection name from the configuration.")],
    config: ConfigOption = None,
    wait: Annotated[bool, typer.Option("--wait", help="Show progress until it ends.")] = False,
    timeout: Annotated[float, typer.Option(help="With --wait: give up after this many "
                                           "seconds.")] = 0.0,
) -> None:
    """Run a full resync of one collection as Celery tasks."""
    from cli.resync import run_resync

    settings = settings_from(config)
    _known(settings, name)
    raise typer.Exit(run_resync(settings, name, wait, timeout, console))


@app.command()
def verify(
    name: Annotated[str, typer.Argument(help="Collection name from the configuration.")],
    config: ConfigOption = None,
    sample: Annotated[int, typer.Option(help="Compare only N random production documents "
                                        "(0: all).")] = 0,
    settle: Annotated[float, typer.Option(help="Seconds to wait for the pipeline to catch up "
                                          "before re-checking differences.")] = 30.0,
    json_output: Annotated[bool, typer.Option("--json", help="Machine-readable report.")
                           ] = False,
) -> None:
    """Compare production and staging on the fields production owns."""
    from cli.verify import run_verify

    settings = settings_from(config)
    _known(settings, name)
    raise typer.Exit(run_verify(settings, name, sample, settle, json_output, console))


@app.command()
def status(
    config: ConfigOption = None,
    json_output: Annotated[bool, typer.Option("--json", help="Machine-readable output.")
                           ] = False,
    watch_live: Annotated[bool, typer.Option("--watch", help="Refresh live.")] = False,
    interval: Annotated[float, typer.Option(help="Seconds between refreshes.")] = 2.0,
) -> None:
    """Lag, throughput, queues, checkpoints and health per collection."""
    from cli.status import run_status

    settings = settings_from(config)
    raise typer.Exit(run_status(settings, json_output, watch_live, interval, console))


@app.command("ratelimit")
def rate_limit(
    name: Annotated[str, typer.Argument(help="Collection name from the configuration.")],
    rate: Annotated[str | None, typer.Argument(help="New rate, e.g. 500/s; omit to show.")
                    ] = None,
    config: ConfigOption = None,
    clear: Annotated[bool, typer.Option("--clear", help="Return to the configured rate.")
                     ] = False,
) -> None:
    """Show or change a collection's rate limit for all its workers, at run time."""
    from settings.model import parse_rate_limit
    from tasks.rate_limit import effective_rate, set_rate_override
    from tasks.staging import connect_staging

    settings = settings_from(config)
    _known(settings, name)
    if rate is not None:
        try:
            parse_rate_limit(rate)
        except ValueError as error:
            raise fail(str(error), 2) from None
    client = connect_staging(settings.staging, serverSelectionTimeoutMS=10_000)
    state_db = client[settings.staging.state_db]
    if clear or rate is not None:
        set_rate_override(state_db, name, None if clear else rate)
    current, source = effective_rate(settings, state_db, name)
    console.print(f"{name}: {current or 'unlimited'} ({source})")
    client.close()


@dlq_app.command("list")
def dlq_list(
    config: ConfigOption = None,
    collection: Annotated[str | None, typer.Option(help="Only this collection.")] = None,
    reason: Annotated[str | None, typer.Option(help="Only this reason.")] = None,
    json_output: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """List dead-lettered changes."""
    from cli.dead_letters import list_entries

    settings = settings_from(config)
    if collection:
        _known(settings, collection)
    raise typer.Exit(list_entries(settings, collection, reason, json_output, console))


@dlq_app.command("show")
def dlq_show(
    pid: Annotated[str, typer.Argument(help="Production _id as listed (Extended JSON).")],
    config: ConfigOption = None,
    collection: Annotated[str | None, typer.Option(help="Collection of the entry.")] = None,
) -> None:
    """Show one dead-lettered change."""
    from cli.dead_letters import show_entry

    settings = settings_from(config)
    raise typer.Exit(show_entry(settings, collection, pid, console))


@dlq_app.command("replay")
def dlq_replay(
    config: ConfigOption = None,
    collection: Annotated[str | None, typer.Option(help="Only this collection.")] = None,
    reason: Annotated[str | None, typer.Option(help="Only this reason.")] = None,
    pid: Annotated[list[str] | None, typer.Option("--id", help="Only these production _ids.")
                   ] = None,
) -> None:
    """Apply dead-lettered changes again through the normal path; entries that succeed go."""
    from cli.dead_letters import replay_entries

    settings = settings_from(config)
    if collection:
        _known(settings, collection)
    raise typer.Exit(replay_entries(settings, collection, reason, pid or [], console))


@dlq_app.command("purge")
def dlq_purge(
    config: ConfigOption = None,
    collection: Annotated[str | None, typer.Option(help="Only this collection.")] = None,
    pid: Annotated[list[str] | None, typer.Option("--id", help="Only these production _ids.")
                   ] = None,
    yes: Annotated[bool, typer.Option("--yes", help="Do not ask for confirmation.")] = False,
) -> None:
    """Delete dead-letter entries without applying them."""
    from cli.dead_letters import purge_entries

    settings = settings_from(config)
    if collection:
        _known(settings, collection)
    if not yes and sys.stdin.isatty():
        typer.confirm("Delete these dead-letter entries for good?", abort=True)
    raise typer.Exit(purge_entries(settings, collection, pid, console))


@pii_app.command("scan")
def pii_scan(
    name: Annotated[str, typer.Argument(help="Collection name from the configuration.")],
    config: ConfigOption = None,
    sample: Annotated[int, typer.Option(min=1, help="Read the N newest production documents "
                                        "(read only).")] = 1000,
) -> None:
    """Classify every field of a production sample; print a table and proposed settings."""
    from cli.pii_scan import run_scan

    settings = settings_from(config)
    _known(settings, name)
    raise typer.Exit(run_scan(settings, name, sample, console))


@app.command()
def demo(
    non_interactive: Annotated[bool, typer.Option(
        "--non-interactive", help="No live screen; exit 0 once staging verifies equal.")] = False,
    documents: Annotated[int, typer.Option(help="Production documents to seed.")] = 2000,
    burst: Annotated[int, typer.Option(help="Changes in the burst phase.")] = 5000,
) -> None:
    """Run a complete sync between two local servers with generated traffic."""
    from cli.demo import run_demo

    raise typer.Exit(run_demo(console, non_interactive, documents, burst))


def _known(settings: Settings, name: str) -> None:
    try:
        settings.collection(name)
    except KeyError as error:
        raise fail(str(error.args[0]), 2) from None


def main() -> None:
    app()


if __name__ == "__main__":
    main()
