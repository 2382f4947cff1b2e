"""The `postroom` command: one subcommand per process, plus the operator's verbs."""

from __future__ import annotations

import asyncio
import sys
from typing import Annotated, TypeVar

import typer
from pydantic import ValidationError

from postroom.settings import ApiSettings, CommonSettings, ConfigError, RelaySettings

S = TypeVar("S", bound=CommonSettings)

app = typer.Typer(no_args_is_help=True, add_completion=False, help=__doc__)
outbox_app = typer.Typer(no_args_is_help=True, help="Look at the outbox.")
app.add_typer(outbox_app, name="outbox")


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


@outbox_app.command("recent")
def outbox_recent(limit: Annotated[int, typer.Option(min=1, max=1000)] = 10) -> None:
    """Show the newest outbox rows."""
    from postroom.operator import recent_outbox_rows

    settings = _load("outbox", CommonSettings)
    rows = asyncio.run(recent_outbox_rows(settings, limit=limit))
    if not rows:
        typer.echo("the outbox is empty")
    for row in rows:
        state = "published" if row.published_at else ("parked" if row.parked_at else "pending")
        typer.echo(
            f"{row.id:>8}  {row.created_at:%Y-%m-%d %H:%M:%S}  {state:<9}  shard {row.shard:<3} "
            f"{row.event_type:<20} {row.aggregate_id}  {row.payload}"
        )


def main(argv: list[str] | None = None) -> None:
    app(args=argv if argv is not None else sys.argv[1:], prog_name="postroom")


if __name__ == "__main__":
    main()
