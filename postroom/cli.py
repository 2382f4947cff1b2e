"""The `postroom` command: one subcommand per process, plus the operator's verbs."""

from __future__ import annotations

import asyncio
import sys
from typing import Annotated, TypeVar

import typer
from pydantic import ValidationError

from postroom.settings import (
    ApiSettings,
    CommonSettings,
    ConfigError,
    NotifierSettings,
    RelaySettings,
)

S = TypeVar("S", bound=CommonSettings)

app = typer.Typer(no_args_is_help=True, add_completion=False, help=__doc__)
outbox_app = typer.Typer(no_args_is_help=True, help="Look at the outbox.")
app.add_typer(outbox_app, name="outbox")
events_app = typer.Typer(no_args_is_help=True, help="Look at the events on Kafka.")
app.add_typer(events_app, name="events")


def _fail(process: str, reason: str) -> typer.Exit:
    typer.echo(f"postroom {process}: configuration error: {reason}", err=True)
    return typer.Exit(code=2)


def _load(process: str, cls: type[S]) -> S:
    try:
        return cls()
    except ConfigError as exc:
        raise _fail(process, str(exc)) from None
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"]).upper() or "settings"
        raise _fail(process, f"{where}: {first['msg']}") from None


@app.command()
def api() -> None:
    """Run the REST API (uvicorn)."""
    import uvicorn

    from api.app import create_app
    from postroom.logs import configure_logging

    settings = _load("api", ApiSettings)
    configure_logging(settings.log_level)
    uvicorn.run(
        create_app(settings),
        host=settings.api_host,
        port=settings.api_port,
        access_log=False,  # uvicorn's would print query strings; ACCESS_LOG logs routes instead
        log_level=settings.log_level,
        server_header=False,
    )


@app.command()
def relay() -> None:
    """Run the outbox relay: committed outbox rows to Kafka."""
    import uvicorn

    from outbox_relay.service import create_app
    from postroom.logs import configure_logging

    settings = _load("relay", RelaySettings)
    configure_logging(settings.log_level)
    uvicorn.run(
        create_app(settings),
        host=settings.relay_metrics_host,
        port=settings.relay_metrics_port,
        access_log=False,
        log_level="warning",
        server_header=False,
        timeout_graceful_shutdown=60,
    )


@app.command()
def notifier() -> None:
    """Run the notifier: user events to emails through Postmark, and Postmark's webhooks."""
    import uvicorn

    from notifier.app import create_app
    from postroom.logs import configure_logging

    settings = _load("notifier", NotifierSettings)
    configure_logging(settings.log_level)
    uvicorn.run(
        create_app(settings),
        host=settings.notifier_host,
        port=settings.notifier_port,
        access_log=False,
        log_level="warning",
        server_header=False,
        timeout_graceful_shutdown=60,
    )


@app.command()
def sandbox() -> None:
    """Run the Postmark sandbox and the dev inbox (uvicorn)."""
    import uvicorn

    from postroom.logs import configure_logging
    from sandbox.app import create_app
    from sandbox.settings import SandboxSettings

    settings = _load("sandbox", SandboxSettings)
    configure_logging(settings.log_level)
    uvicorn.run(
        create_app(settings),
        host=settings.sandbox_host,
        port=settings.sandbox_port,
        access_log=False,
        log_level=settings.log_level,
        server_header=False,
        # Answers held back by an injected timeout must not hold up a restart.
        timeout_graceful_shutdown=5,
    )


@app.command()
def migrate(revision: Annotated[str, typer.Argument()] = "head") -> None:
    """Apply database migrations up to REVISION (default: head)."""
    from postroom import migrate as migrations

    settings = _load("migrate", CommonSettings)
    migrations.upgrade(settings.database_url, revision)
    typer.echo(f"database migrated to {revision}")


@app.command()
def dev() -> None:
    """Run the whole stack on embedded defaults (what `make dev` runs)."""
    from postroom.dev import run_dev

    raise typer.Exit(code=run_dev())


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 120:
        return f"{seconds:.1f}s"
    if seconds < 7200:
        return f"{seconds / 60:.1f}m"
    return f"{seconds / 3600:.1f}h"


@outbox_app.command("status")
def outbox_status() -> None:
    """Pending rows per shard, the oldest pending age, parked rows, and who owns each shard."""
    from rich.console import Console
    from rich.table import Table

    from outbox_relay import admin

    settings = _load("outbox", CommonSettings)
    report = asyncio.run(admin.status(settings))
    table = Table("shard", "pending", "oldest pending", "owner")
    for shard in report.shards:
        table.add_row(
            str(shard.shard),
            str(shard.pending),
            _age(shard.oldest_pending_age),
            shard.owner or "[red]nobody[/red]",
        )
    console = Console()
    console.print(table)
    console.print(
        f"pending {report.pending}   parked {report.parked}   published (kept) {report.published}"
    )


@outbox_app.command("recent")
def outbox_recent(
    limit: Annotated[int, typer.Option(min=1, max=1000)] = 10,
    parked: Annotated[bool, typer.Option("--parked", help="Only parked rows.")] = False,
) -> None:
    """Show the newest outbox rows."""
    from rich.console import Console
    from rich.table import Table

    from outbox_relay import admin

    settings = _load("outbox", CommonSettings)
    rows = asyncio.run(admin.recent(settings, limit=limit, parked_only=parked))
    if not rows:
        typer.echo("no rows")
        return
    table = Table("id", "created", "state", "shard", "type", "aggregate", "payload / error")
    for row in rows:
        table.add_row(
            str(row.id),
            f"{row.created_at:%Y-%m-%d %H:%M:%S}",
            row.state,
            str(row.shard),
            row.event_type,
            row.aggregate_id,
            row.last_error if row.state == "parked" and row.last_error else row.payload,
        )
    Console(width=200).print(table)


@outbox_app.command("retry-parked")
def outbox_retry_parked(
    ids: Annotated[
        list[int] | None, typer.Argument(help="Row ids; all parked rows if none.")
    ] = None,
) -> None:
    """Put parked rows back in line for the relays."""
    from outbox_relay import admin

    settings = _load("outbox", CommonSettings)
    retried = asyncio.run(admin.retry_parked(settings, ids=ids or []))
    if ids and len(retried) < len(ids):
        missing = sorted(set(ids) - set(retried))
        typer.echo(f"not parked (or unknown): {', '.join(map(str, missing))}", err=True)
        typer.echo(f"re-queued {len(retried)} row(s)")
        raise typer.Exit(code=1)
    typer.echo(f"re-queued {len(retried)} row(s)")


@outbox_app.command("prune")
def outbox_prune(
    older_than: Annotated[
        float | None, typer.Option(help="Seconds; default OUTBOX_RETENTION.")
    ] = None,
) -> None:
    """Delete published rows older than the retention (the relays also do this every minute)."""
    from outbox_relay import admin

    settings = _load("outbox", RelaySettings)
    age = settings.outbox_retention if older_than is None else older_than
    typer.echo(f"deleted {asyncio.run(admin.prune(settings, older_than=age))} published row(s)")


@events_app.command("tail")
def events_tail(
    aggregate: Annotated[str, typer.Option("--aggregate", help="user or email")] = "user",
    from_beginning: Annotated[bool, typer.Option("--from-beginning")] = False,
    limit: Annotated[int | None, typer.Option(min=1, help="Stop after this many.")] = None,
    wait: Annotated[
        float | None, typer.Option(help="Stop after this many seconds without a record.")
    ] = None,
) -> None:
    """Print the records of <prefix>.<aggregate> as JSON lines, following new ones."""
    from postroom.settings import KafkaSettings
    from postroom.tail import tail

    settings = _load("events", KafkaSettings)
    topic = settings.topic(aggregate)
    try:
        asyncio.run(
            tail(
                settings,
                topic=topic,
                from_beginning=from_beginning,
                limit=limit,
                wait=wait,
                emit=lambda line: typer.echo(line),
            )
        )
    except LookupError as exc:
        typer.echo(f"postroom events: {exc}", err=True)
        raise typer.Exit(code=1) from None
    except KeyboardInterrupt:
        pass


def main(argv: list[str] | None = None) -> None:
    app(args=argv if argv is not None else sys.argv[1:], prog_name="postroom")


if __name__ == "__main__":
    main()
