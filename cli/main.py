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
from rich.markup import escape
from stagesync.cli.help_format import Typer
from stagesync.deployments.in_lists import configure as configure_in_lists
from stagesync.settings import CONFIG_ENV, ConfigError, Settings, load_settings
from stagesync.settings.logs import configure_logging, redact_uri

app = Typer(
    add_completion=False, no_args_is_help=True,
    help="Keep a staging MongoDB in sync with production through change streams.",
    epilog="New here? `stagesync demo` shows the whole product on this machine in about a "
    "minute; `stagesync init` writes a starter configuration.",
)
dlq_app = Typer(no_args_is_help=True, help="Inspect and replay the dead-letter store.")
app.add_typer(dlq_app, name="dlq")
pii_app = Typer(no_args_is_help=True, help="Personal data: find it in production, propose "
                      "the pii and allow settings.")
app.add_typer(pii_app, name="pii")
env_app = Typer(no_args_is_help=True, help="Environments: short-lived stagings beside the "
                "main one (one per pull request or test run), fed by the same stream.",
                epilog="Example: stagesync env create pr-1 --sample 10 --wait  |  stagesync "
                "env list --json  |  stagesync env freeze pr-1  |  stagesync env thaw pr-1 "
                "--wait  |  stagesync env reset pr-1 --wait  |  stagesync env delete pr-1")
app.add_typer(env_app, name="env")
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
        errors.print(f"[red]stagesync:[/red] {escape(str(error))}", highlight=False,
                     soft_wrap=True)
        raise typer.Exit(2) from None
    configure_in_lists(settings.in_list_max)
    return settings


def fail(message: str, code: int = 1) -> typer.Exit:
    errors.print(f"[red]stagesync:[/red] {redact_uri(message)}", highlight=False)
    return typer.Exit(code)


@app.command(epilog="Examples: stagesync init --prod-uri mongodb://prod:27017/?replicaSet=rs0 "
             "--staging-uri mongodb://staging:27017/  |  stagesync init --output my.yaml")
def init(
    prod_uri: Annotated[str | None, typer.Option(
        help="Production, sampled read-only to propose collections, business keys and PII "
        "rules (default: write an example to edit).", show_default=False)] = None,
    staging_uri: Annotated[str | None, typer.Option(
        help="Staging (default: a placeholder to edit).", show_default=False)] = None,
    redis_url: Annotated[str, typer.Option(help="The Celery broker.")
                         ] = "redis://127.0.0.1:6379/0",
    output: Annotated[Path | None, typer.Option(
        "--output", "-o", help=f"File to write; never overwritten (default: ${CONFIG_ENV} or "
        "./stagesync.yaml).", show_default=False)] = None,
    sample: Annotated[int, typer.Option(min=1, help="Newest documents read per collection "
                                        "for the proposal.")] = 200,
    database: Annotated[list[str] | None, typer.Option(
        "--database", help="Only this production database (repeatable; default: all but "
        "admin, config and local).", show_default=False)] = None,
) -> None:
    """Write a commented starter configuration, proposed from production when reachable."""
    from stagesync.cli.init import run_init
    from stagesync.settings import config_path

    raise typer.Exit(run_init(console, output or config_path(), prod_uri, staging_uri,
                              redis_url, sample, database or []))


@app.command(epilog="Example: stagesync check --config stagesync.yaml")
def check(config: ConfigOption = None) -> None:
    """Validate the configuration and reach production, staging and Redis."""
    from stagesync.cli.check import run_check

    settings = settings_from(config)
    raise typer.Exit(run_check(settings, console))


@app.command(epilog="Examples: stagesync watch  |  stagesync watch --collection orders "
              "--collection users  |  stagesync watch --dry-run")
def watch(
    config: ConfigOption = None,
    collection: Annotated[list[str] | None, typer.Option(
        "--collection", help="Watch only this collection (repeatable; default: every configured "
        "collection).", show_default=False)] = None,
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
        from stagesync.cli.dry_run import run_dry

        raise typer.Exit(run_dry(settings, names, console))
    from stagesync.deployments.guard import SameDeploymentError
    from stagesync.deployments.staging_indexes import IndexConflictError
    from stagesync.watcher.runner import run_watcher

    try:
        raise typer.Exit(run_watcher(settings, names))
    except SameDeploymentError as error:
        raise fail(str(error), 3) from None
    except IndexConflictError as error:
        raise fail(str(error), 1) from None


@app.command(epilog="Example: stagesync resync orders --wait --timeout 600")
def resync(
    name: Annotated[str, typer.Argument(help="Collection name from the configuration.")],
    config: ConfigOption = None,
    wait: Annotated[bool, typer.Option("--wait", help="Show progress until it ends (default: "
                                       "start it and return).")] = False,
    timeout: Annotated[float, typer.Option(help="With --wait: stop waiting after this many "
                                           "seconds; the resync goes on. 0: wait until it "
                                           "ends.")] = 0.0,
) -> None:
    """Run a full resync of one collection as Celery tasks."""
    from stagesync.cli.resync import run_resync

    settings = settings_from(config)
    _known(settings, name)
    raise typer.Exit(run_resync(settings, name, wait, timeout, console))


@app.command(epilog="Examples: stagesync verify orders  |  stagesync verify orders --sample 500 "
              "--json")
def verify(
    name: Annotated[str, typer.Argument(help="Collection name from the configuration.")],
    config: ConfigOption = None,
    sample: Annotated[int, typer.Option(help="Compare only N random production documents "
                                        "(0: every document).")] = 0,
    settle: Annotated[float, typer.Option(help="Seconds to wait for the pipeline to catch up "
                                          "before re-checking differences (0: report them "
                                          "at once).")] = 30.0,
    json_output: Annotated[bool, typer.Option("--json", help="Machine-readable report (default: "
                                                 "a table).")] = False,
) -> None:
    """Compare production and staging on the fields production owns."""
    from stagesync.cli.verify import run_verify

    settings = settings_from(config)
    _known(settings, name)
    raise typer.Exit(run_verify(settings, name, sample, settle, json_output, console))


@app.command(epilog="Examples: stagesync status  |  stagesync status --wide  |  "
              "stagesync status --watch --interval 1  |  stagesync status --json")
def status(
    config: ConfigOption = None,
    json_output: Annotated[bool, typer.Option("--json", help="Machine-readable output (default: "
                                                 "a table).")] = False,
    watch_live: Annotated[bool, typer.Option("--watch", help="Refresh live until Ctrl-C "
                                             "(default: print once).")] = False,
    interval: Annotated[float, typer.Option(help="With --watch: seconds between reads.")] = 2.0,
    wide: Annotated[bool, typer.Option("--wide", help="Every column: watcher, counters, queues, "
                                       "rate limit, checkpoint, oplog headroom (default: the "
                                       "essentials, within 100 columns).")] = False,
) -> None:
    """Lag, throughput, queues, checkpoints and health per collection."""
    from stagesync.cli.status import run_status

    settings = settings_from(config)
    raise typer.Exit(run_status(settings, json_output, watch_live, interval, console, wide))


@app.command("ratelimit", epilog="Examples: stagesync ratelimit orders  |  stagesync ratelimit "
              "orders 500/s  |  stagesync ratelimit orders --clear")
def rate_limit(
    name: Annotated[str, typer.Argument(help="Collection name from the configuration.")],
    rate: Annotated[str | None, typer.Argument(help="New rate, e.g. 500/s or 20000/m; omit to "
                                                  "show the rate in force.", show_default=False)
                    ] = None,
    config: ConfigOption = None,
    clear: Annotated[bool, typer.Option("--clear", help="Drop the run-time rate: back to "
                                                 "the configured one (or unlimited).")] = False,
) -> None:
    """Show or change a collection's rate limit for all its workers, at run time."""
    import redis
    from stagesync.deployments.broker import ChangeSignal
    from stagesync.deployments.staging import connect_staging
    from stagesync.protocol.names import RATE_LIMITS_CHANGED_KEY
    from stagesync.settings.values import parse_rate_limit
    from stagesync.state.database import state_database
    from stagesync.state.rate_limits import effective_rate, set_rate_override

    settings = settings_from(config)
    _known(settings, name)
    if rate is not None:
        try:
            parse_rate_limit(rate)
        except ValueError as error:
            raise fail(str(error), 2) from None
    client = connect_staging(settings.staging, serverSelectionTimeoutMS=10_000)
    state_db = state_database(client, settings.staging)
    if clear or rate is not None:
        broker = redis.Redis.from_url(settings.redis_url, socket_timeout=5)
        try:
            set_rate_override(state_db, name, None if clear else rate,
                              ChangeSignal(broker, RATE_LIMITS_CHANGED_KEY))
        finally:
            broker.close()
    current, source = effective_rate(settings, state_db, name)
    console.print(f"{name}: {current or 'unlimited'} ({source})")
    client.close()


# The options several `dlq` commands share.
DlqCollectionOption = Annotated[str | None, typer.Option(
    "--collection", help="Only this collection (default: every collection).",
    show_default=False)]
DlqReasonOption = Annotated[str | None, typer.Option(
    "--reason", help="Only this reason, e.g. key_conflict (default: any reason).",
    show_default=False)]


@dlq_app.command("list", epilog="Example: stagesync dlq list --collection orders --reason "
                  "key_conflict")
def dlq_list(
    config: ConfigOption = None,
    collection: DlqCollectionOption = None,
    reason: DlqReasonOption = None,
    json_output: Annotated[bool, typer.Option("--json", help="Machine-readable output (default: a "
                                              "table).")] = False,
) -> None:
    """List dead-lettered changes."""
    from stagesync.cli.dead_letters import list_entries

    settings = settings_from(config)
    if collection:
        _known_scoped(settings, collection)
    raise typer.Exit(list_entries(settings, collection, reason, json_output, console))


@dlq_app.command("show", epilog="Example: stagesync dlq show '{\"$oid\": \"65f0c0ffee0000000000000"
                  "1\"}' --collection orders")
def dlq_show(
    pid: Annotated[str, typer.Argument(help="Production _id as listed (Extended JSON).")],
    config: ConfigOption = None,
    collection: Annotated[str | None, typer.Option(
        help="Collection of the entry (default: search every collection).",
        show_default=False)] = None,
) -> None:
    """Show one dead-lettered change."""
    from stagesync.cli.dead_letters import show_entry

    settings = settings_from(config)
    raise typer.Exit(show_entry(settings, collection, pid, console))


@dlq_app.command("replay", epilog="Example: stagesync dlq replay --collection orders --reason "
                  "write_error")
def dlq_replay(
    config: ConfigOption = None,
    collection: DlqCollectionOption = None,
    reason: DlqReasonOption = None,
    pid: Annotated[list[str] | None, typer.Option(
        "--id", help="Only these production _ids (repeatable; default: all).", show_default=False)
                   ] = None,
) -> None:
    """Apply dead-lettered changes again through the normal path; entries that succeed go."""
    from stagesync.cli.dead_letters import replay_entries

    settings = settings_from(config)
    if collection:
        _known_scoped(settings, collection)
    raise typer.Exit(replay_entries(settings, collection, reason, pid or [], console))


@dlq_app.command("purge", epilog="Example: stagesync dlq purge --collection orders --yes")
def dlq_purge(
    config: ConfigOption = None,
    collection: Annotated[str | None, typer.Option(
        help="Only this collection (default: every collection).", show_default=False)] = None,
    pid: Annotated[list[str] | None, typer.Option(
        "--id", help="Only these production _ids (repeatable; default: all).", show_default=False)
                   ] = None,
    yes: Annotated[bool, typer.Option("--yes", help="Do not ask for confirmation (asked "
                                             "only on a terminal).")] = False,
) -> None:
    """Delete dead-letter entries without applying them."""
    from stagesync.cli.dead_letters import purge_entries

    settings = settings_from(config)
    if collection:
        _known_scoped(settings, collection)
    if not yes and sys.stdin.isatty():
        typer.confirm("Delete these dead-letter entries for good?", abort=True)
    raise typer.Exit(purge_entries(settings, collection, pid, console))


@pii_app.command("scan", epilog="Example: stagesync pii scan orders --sample 5000")
def pii_scan(
    name: Annotated[str, typer.Argument(help="Collection name from the configuration.")],
    config: ConfigOption = None,
    sample: Annotated[int, typer.Option(min=1, help="Read the N newest production documents "
                                        "(read only).")] = 1000,
) -> None:
    """Classify every field of a production sample; print a table and proposed settings."""
    from stagesync.cli.pii_scan import run_scan

    settings = settings_from(config)
    _known(settings, name)
    raise typer.Exit(run_scan(settings, name, sample, console))


@app.command(epilog="Examples: stagesync demo  |  stagesync demo --non-interactive  |  "
             "stagesync demo --keep, then stagesync demo --stop")
def demo(
    non_interactive: Annotated[bool, typer.Option(
        "--non-interactive", help="No live screen: a progress line every few seconds; exit 0 "
        "once staging verifies equal (default: a live screen on a terminal).")] = False,
    documents: Annotated[int, typer.Option(min=10, help="Production orders to seed (plus a "
                                           "quarter as many users).")] = 500,
    burst: Annotated[int, typer.Option(min=0, help="Most changes in the burst, written as "
                                       "fast as production takes them after the steady phase "
                                       "(0: no burst).")] = 3000,
    burst_seconds: Annotated[float, typer.Option(min=0.5, help="Most seconds of burst "
                                                 "writing: a slower server gets a smaller "
                                                 "burst, not a longer demo.")] = 5.0,
    steady_seconds: Annotated[float, typer.Option(min=1, help="Length of the steady phase "
                                                  "(20 changes/s, each one's lag measured).")
                              ] = 10.0,
    keep: Annotated[bool, typer.Option("--keep", help="Leave everything running afterwards, "
                                       "write ./stagesync.yaml and print what to try next "
                                       "(default: stop it all).")] = False,
    stop: Annotated[bool, typer.Option("--stop", help="End a demo left running by --keep "
                                       "(run it in the same directory).")] = False,
) -> None:
    """Run a complete sync between local servers it starts itself, in about a minute."""
    from stagesync.cli.demo import run_demo
    from stagesync.cli.demo_keep import stop_demo

    if stop:
        raise typer.Exit(stop_demo(console))
    raise typer.Exit(run_demo(console, non_interactive, documents, burst, steady_seconds,
                             burst_seconds, keep))


EnvName = Annotated[str, typer.Argument(help="Environment name: 1-31 lower-case letters, "
                                        "digits and dashes (e.g. pr-123).")]


@env_app.command("create", epilog="Examples: stagesync env create pr-1 --sample 10 --wait  |  "
                 "stagesync env create qa --ttl 8h")
def env_create(
    name: EnvName,
    config: ConfigOption = None,
    sample: Annotated[float | None, typer.Option(
        "--sample", min=0.0, max=100.0, help="Keep this percent of each collection without a "
        "follow subset, and what follows it (default: everything).", show_default=False)
    ] = None,
    ttl: Annotated[str | None, typer.Option(
        "--ttl", help="Lifetime, e.g. 8h or 3d (default: environments.ttl).",
        show_default=False)] = None,
    wait: Annotated[bool, typer.Option("--wait", help="Follow the copy until the "
                                       "environment is live.")] = False,
    timeout: Annotated[float, typer.Option(help="With --wait: stop waiting after this many "
                                           "seconds; the copy goes on. 0: until live.")] = 0.0,
) -> None:
    """Create an environment: its databases, stagesync's indexes, a copy of production
    (masked, sampled) by resync; the stream keeps it up to date. Re-run on an environment
    stuck in `creating`, it finishes the job."""
    from stagesync.cli.environments import Refused, run_create

    settings = settings_from(config)
    try:
        raise typer.Exit(run_create(settings, name, sample, ttl, wait, timeout, console))
    except Refused as error:
        raise fail(str(error), error.code) from None


@env_app.command("list", epilog="Examples: stagesync env list  |  stagesync env list --json")
def env_list(
    config: ConfigOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="A JSON list: name, state, "
                                          "created_at, expires_at, collections.")] = False,
) -> None:
    """List the environments: state, lifetime, and per collection its target, live
    documents and lag."""
    from stagesync.cli.environments import run_list

    raise typer.Exit(run_list(settings_from(config), as_json, console))


WaitTimeout = Annotated[float, typer.Option(help="With --wait: stop waiting after this many "
                                             "seconds; the work goes on. 0: until done.")]


@env_app.command("freeze", epilog="Example: stagesync env freeze pr-1")
def env_freeze(name: EnvName, config: ConfigOption = None) -> None:
    """Freeze an environment: it holds still (no write, no soft delete) while production
    moves; what it misses is remembered per document for its thaw. Returns once no worker
    writes into it."""
    from stagesync.cli.environments import Refused, run_freeze

    settings = settings_from(config)
    try:
        raise typer.Exit(run_freeze(settings, name, console))
    except Refused as error:
        raise fail(str(error), error.code) from None


@env_app.command("thaw", epilog="Example: stagesync env thaw pr-1 --wait")
def env_thaw(
    name: EnvName,
    config: ConfigOption = None,
    wait: Annotated[bool, typer.Option("--wait", help="Follow the thaw until the environment "
                                       "has caught up.")] = False,
    timeout: WaitTimeout = 0.0,
) -> None:
    """Thaw a frozen environment: the stream writes it again, and it applies the documents
    it missed (or is copied again, when it missed too many or production's history was
    lost). Re-run on a thaw left halfway, it finishes the job."""
    from stagesync.cli.environments import Refused, run_thaw

    settings = settings_from(config)
    try:
        raise typer.Exit(run_thaw(settings, name, wait, timeout, console))
    except Refused as error:
        raise fail(str(error), error.code) from None


@env_app.command("reset", epilog="Example: stagesync env reset pr-1 --wait")
def env_reset(
    name: EnvName,
    config: ConfigOption = None,
    wait: Annotated[bool, typer.Option("--wait", help="Follow the copy until the environment "
                                       "is live.")] = False,
    timeout: WaitTimeout = 0.0,
) -> None:
    """Reset an environment to production's state (masked, sampled): its QA edits,
    staging-only fields and fixtures are removed and it is copied again. Re-run on a reset
    left halfway, it finishes the job."""
    from stagesync.cli.environments import Refused, run_reset

    settings = settings_from(config)
    try:
        raise typer.Exit(run_reset(settings, name, wait, timeout, console))
    except Refused as error:
        raise fail(str(error), error.code) from None


@env_app.command("delete", epilog="Example: stagesync env delete pr-1")
def env_delete(name: EnvName, config: ConfigOption = None) -> None:
    """Delete an environment: drop the databases recorded for it, then its records."""
    from stagesync.cli.environments import Refused, run_delete

    settings = settings_from(config)
    try:
        raise typer.Exit(run_delete(settings, name, console))
    except Refused as error:
        raise fail(str(error), error.code) from None


def _known(settings: Settings, name: str) -> None:
    try:
        settings.collection(name)
    except KeyError as error:
        raise fail(str(error.args[0]), 2) from None


def _known_scoped(settings: Settings, name: str) -> None:
    """A configured collection, or its copies in an environment (`orders@pr-1`): the
    dead-letter store keeps an environment's entries under that name."""
    from stagesync.protocol.names import split_scope

    _known(settings, split_scope(name)[0])


def main() -> None:
    app()


if __name__ == "__main__":
    main()
