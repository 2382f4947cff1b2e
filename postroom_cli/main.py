"""The `postroom` command: one subcommand per process, `dev`, and the operator's verbs.

This package sits on top: it is the only one that imports every process."""

from __future__ import annotations

import os
import signal
import sys


def _interrupted_while_loading(_signum: int, _frame: object) -> None:
    # Nothing has started yet, so nothing to clean up; and an exception raised here could
    # land where Python ignores it (an import lock's weakref callback), and the stack would
    # then start regardless.
    os._exit(130)


# Loading the command takes a moment (pydantic, SQLAlchemy): a Ctrl-C then ends it quietly
# with 130, as typer ends a command it interrupts, not with a traceback out of some import.
# Put back once this module is loaded (ruff: the imports below come after this on purpose).
_sigint_before = signal.signal(signal.SIGINT, _interrupted_while_loading)
# ruff: noqa: E402

import asyncio
import dataclasses
import importlib.metadata
import json
import logging
from collections.abc import Coroutine
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer
from pydantic import SecretStr
from sqlalchemy.engine import make_url

from notifier.settings import NotifierSettings
from outbox_relay.settings import RelaySettings
from postroom.addresses import address_key
from postroom.settings import CommonSettings, ConfigError, EmailSettings, load

if TYPE_CHECKING:
    from postroom.emails import Emails

S = TypeVar("S", bound=CommonSettings)

app = typer.Typer(no_args_is_help=True, add_completion=False, help=__doc__)
outbox_app = typer.Typer(no_args_is_help=True, help="Look at the outbox.")
app.add_typer(outbox_app, name="outbox")
events_app = typer.Typer(no_args_is_help=True, help="Look at the events on Kafka.")
app.add_typer(events_app, name="events")
dlq_app = typer.Typer(no_args_is_help=True, help="The notifier's dead-letter topic.")
app.add_typer(dlq_app, name="dlq")
suppressions_app = typer.Typer(no_args_is_help=True, help="The addresses nothing is sent to.")
app.add_typer(suppressions_app, name="suppressions")
templates_app = typer.Typer(
    no_args_is_help=True,
    help="The emails: check and preview the catalogue and templates in effect "
    "(NOTIFIER_TEMPLATES_DIR over the built-ins).",
)
app.add_typer(templates_app, name="templates")


def _fail(process: str, reason: str) -> typer.Exit:
    typer.echo(f"postroom {process}: configuration error: {reason}", err=True)
    return typer.Exit(code=2)


def _load(
    process: str,
    cls: type[S],
    *,
    verbose: bool = False,
    database: bool = False,
    broker: bool = False,
) -> S:
    """An operator verb's settings, or exit 2 with the one-line reason. They come from the
    environment, `.env`, and the settings `make dev` wrote for the checkout's stack (see
    `postroom_cli.stack`); the processes themselves never read that file. Verbose, one line on
    stderr says which file was found and where the database and the broker the verb talks to
    are."""
    from postroom_cli.stack import StackSettingsError, describe, settings_files

    try:
        files = settings_files()
        settings = load(cls, env_file=tuple(str(path) for path in files))
    except (ConfigError, StackSettingsError) as exc:
        raise _fail(process, str(exc)) from None
    if verbose:
        line = describe(settings, files, database=database, broker=broker)
        typer.echo(f"postroom {process}: {line}", err=True)
    return settings


# Exit codes of the operator verbs (README): 0 done, 1 refused (not found, not parked, ...),
# 2 a configuration error, 3 the database or the broker does not answer, 4 Postmark refused.
UNREACHABLE = 3
POSTMARK_REFUSED = 4  # suppressions remove: Postmark did not reactivate it (refused or too slow)

# Seconds the operator verbs give the broker to answer a request, connecting included (per
# address in KAFKA_BOOTSTRAP_SERVERS): a stack that is down costs seconds, not aiokafka's 40.
# The database's bound is DATABASE_CONNECT_TIMEOUT.
KAFKA_TIMEOUT = 5.0

T = TypeVar("T")

JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]
VerboseOption = Annotated[
    bool,
    typer.Option(
        "-v",
        "--verbose",
        help="Say on stderr which settings file was found and which database and broker "
        "this talks to.",
    ),
]


def _reason(exc: BaseException) -> str:
    """An error's first line; a timeout, whose text is empty, by its name."""
    text = str(exc).splitlines()[0] if str(exc).strip() else ""
    return type(exc).__name__ if isinstance(exc, TimeoutError) or not text else text


class _KafkaComplaints(logging.Handler):
    """Keeps aiokafka's log records from the terminal, remembering the last error one of them
    carried: aiokafka logs why it could not connect, then raises an error that only says it
    could not."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.last: BaseException | None = None

    def emit(self, record: logging.LogRecord) -> None:
        args = record.args if isinstance(record.args, tuple) else ()
        self.last = next((a for a in args if isinstance(a, BaseException)), self.last)


def _database_down(verb: str, settings: CommonSettings, exc: BaseException) -> typer.Exit:
    """Say in one line that the database does not answer; the exit (3) to raise."""
    url = make_url(settings.sqlalchemy_url)
    typer.echo(
        f"postroom {verb}: the database at {url.host}:{url.port} does not answer ({_reason(exc)})",
        err=True,
    )
    return typer.Exit(code=UNREACHABLE)


def _run(verb: str, work: Coroutine[Any, Any, T], settings: CommonSettings) -> T:
    """Run an operator verb's work; a database or broker that does not answer is one line
    on stderr and exit code 3, not a traceback or the client's own logging."""
    from aiokafka.errors import KafkaConnectionError, KafkaTimeoutError

    from postroom.db import is_unavailable

    kafka_log = logging.getLogger("aiokafka")
    complaints = _KafkaComplaints()
    kafka_log.addHandler(complaints)
    kafka_log.propagate = False
    try:
        return asyncio.run(work)
    except (KafkaConnectionError, KafkaTimeoutError) as exc:
        where = getattr(settings, "kafka_bootstrap_servers", "?")
        cause = complaints.last or exc
        timed_out = isinstance(cause, TimeoutError | KafkaTimeoutError)
        reason = f"waited {KAFKA_TIMEOUT:g} s" if timed_out else _reason(cause)
        typer.echo(f"postroom {verb}: the broker at {where} does not answer ({reason})", err=True)
        raise typer.Exit(code=UNREACHABLE) from None
    except Exception as exc:
        if not is_unavailable(exc):
            raise
        raise _database_down(verb, settings, exc) from None
    finally:
        kafka_log.removeHandler(complaints)
        kafka_log.propagate = True


def _utc(moment: datetime) -> str:
    """A time as the API writes it: ISO 8601 in UTC, with `Z`."""
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _print_json(value: Any) -> None:
    typer.echo(json.dumps(value, indent=2, default=str))


def _version(value: bool) -> None:
    if value:
        typer.echo(f"postroom {importlib.metadata.version('postroom')}")
        raise typer.Exit()


@app.callback()
def root(
    version: Annotated[
        bool | None,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version."),
    ] = None,
) -> None:
    """Run a Postroom process, the whole stack (dev), or an operator's verb."""


@app.command()
def api() -> None:
    """Run the REST API (the same as `python -m api`)."""
    from api.app import main as run

    run()


@app.command()
def relay() -> None:
    """Run the outbox relay: committed outbox rows to Kafka (`python -m outbox_relay`)."""
    from outbox_relay.app import main as run

    run()


@app.command()
def notifier() -> None:
    """Run the notifier: user events to emails through Postmark (`python -m notifier`)."""
    from notifier.app import main as run

    run()


@app.command()
def sandbox() -> None:
    """Run the Postmark sandbox and its dev inbox (`python -m sandbox`)."""
    from sandbox.app import main as run

    run()


@app.command()
def migrate(
    revision: Annotated[str, typer.Argument()] = "head", verbose: VerboseOption = False
) -> None:
    """Apply database migrations up to REVISION (default: head)."""
    import migrations
    from postroom.db import is_unavailable

    # As the operator verbs: in a checkout, the database of its `make dev` stack.
    settings = _load("migrate", CommonSettings, verbose=verbose, database=True)
    try:
        migrations.upgrade(settings.database_url, revision)
    except migrations.MigrationRefused as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(code=1) from None
    except Exception as exc:
        if not is_unavailable(exc):
            raise
        raise _database_down("migrate", settings, exc) from None
    typer.echo(f"database migrated to {revision}")


@app.command()
def dev() -> None:
    """Run the whole stack on embedded defaults (what `make dev` runs)."""
    from postroom_cli.dev import run_dev

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
def outbox_status(as_json: JsonOption = False, verbose: VerboseOption = False) -> None:
    """Pending rows per shard, the oldest pending age, parked rows, and who owns each shard."""
    from rich.console import Console
    from rich.table import Table

    from outbox_relay import admin

    settings = _load("outbox", CommonSettings, verbose=verbose, database=True)
    report = _run("outbox", admin.status(settings), settings)
    if as_json:
        _print_json(
            {
                "shards": [dataclasses.asdict(shard) for shard in report.shards],
                "pending": report.pending,
                "parked": report.parked,
                "published": report.published,
            }
        )
        return
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
    as_json: JsonOption = False,
    verbose: VerboseOption = False,
) -> None:
    """Show the newest outbox rows."""
    from rich.console import Console
    from rich.table import Table

    from outbox_relay import admin

    settings = _load("outbox", CommonSettings, verbose=verbose, database=True)
    rows = _run("outbox", admin.recent(settings, limit=limit, parked_only=parked), settings)
    if as_json:
        # The payload as the object it is, times as the API writes them (ISO 8601, `Z`).
        _print_json(
            [
                dataclasses.asdict(row)
                | {"payload": json.loads(row.payload), "created_at": _utc(row.created_at)}
                for row in rows
            ]
        )
        return
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
    verbose: VerboseOption = False,
) -> None:
    """Put parked rows back in line for the relays."""
    from outbox_relay import admin

    settings = _load("outbox", CommonSettings, verbose=verbose, database=True)
    retried = _run("outbox", admin.retry_parked(settings, ids=ids or []), settings)
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
    verbose: VerboseOption = False,
) -> None:
    """Delete published rows older than the retention (the relays also do this every minute)."""
    from outbox_relay import admin

    settings = _load("outbox", RelaySettings, verbose=verbose, database=True)
    age = settings.outbox_retention if older_than is None else older_than
    deleted = _run("outbox", admin.prune(settings, older_than=age), settings)
    typer.echo(f"deleted {deleted} published row(s)")


@events_app.command("tail")
def events_tail(
    aggregate: Annotated[str, typer.Option("--aggregate", help="user or email")] = "user",
    from_beginning: Annotated[bool, typer.Option("--from-beginning")] = False,
    limit: Annotated[int | None, typer.Option(min=1, help="Stop after this many.")] = None,
    wait: Annotated[
        float | None, typer.Option(help="Stop after this many seconds without a record.")
    ] = None,
    verbose: VerboseOption = False,
) -> None:
    """Print the records of <prefix>.<aggregate> as JSON lines, following new ones."""
    from postroom.settings import KafkaSettings
    from postroom_cli.tail import tail

    settings = _load("events", KafkaSettings, verbose=verbose, broker=True)
    topic = settings.topic(aggregate)
    try:
        _run(
            "events",
            tail(
                settings,
                topic=topic,
                from_beginning=from_beginning,
                limit=limit,
                wait=wait,
                emit=lambda line: typer.echo(line),
                request_timeout=KAFKA_TIMEOUT,
            ),
            settings,
        )
    except LookupError as exc:
        typer.echo(f"postroom events: {exc}", err=True)
        raise typer.Exit(code=1) from None
    except KeyboardInterrupt:
        pass


@events_app.command("schema")
def events_schema(
    event_type: Annotated[str | None, typer.Argument(help="e.g. user.registered")] = None,
) -> None:
    """Print the JSON Schema of one event type's data, or of all of them (by type)."""
    import json

    from postroom.catalog import schemas

    catalogue = schemas()
    if event_type is None:
        typer.echo(json.dumps(catalogue, indent=2, sort_keys=True))
        return
    if event_type not in catalogue:
        typer.echo(f"unknown event type {event_type!r}; known: {', '.join(catalogue)}", err=True)
        raise typer.Exit(code=1)
    typer.echo(json.dumps(catalogue[event_type], indent=2, sort_keys=True))


@events_app.command("asyncapi")
def events_asyncapi(prefix: Annotated[str, typer.Option()] = "postroom") -> None:
    """Print the AsyncAPI 3 document of the topics (JSON)."""
    import json

    from postroom.catalog import asyncapi

    typer.echo(json.dumps(asyncapi(prefix), indent=2))


@events_app.command("publish")
def events_publish(
    directory: Annotated[Path, typer.Argument()] = Path("docs/events"),
) -> None:
    """Write every event type's JSON Schema and the AsyncAPI document into DIRECTORY."""
    from postroom.catalog import publish

    for path in publish(directory):
        typer.echo(f"wrote {path}")


def _emails() -> Emails:
    """The emails in effect, unchecked (`check` reports every problem), or exit 2 with the
    one-line reason the catalogue is refused."""
    try:
        return _load("templates", EmailSettings).load_emails(check_all=False)
    except ConfigError as exc:
        raise _fail("templates", str(exc)) from None


class PostmarkAccount(CommonSettings):
    """The Postmark server `templates check --postmark` asks about its templates."""

    postmark_server_token: SecretStr = SecretStr("")
    postmark_api_url: str = "https://api.postmarkapp.com/"


def _missing_postmark_templates(emails: Emails) -> list[str]:
    """One line per Postmark template alias of the catalogue the server does not have."""
    from postmarker.core import PostmarkClient
    from postmarker.exceptions import ClientError

    account = _load("templates", PostmarkAccount)
    client = PostmarkClient(
        server_token=account.postmark_server_token.get_secret_value(),
        root_api_url=account.postmark_api_url,
    )
    problems = []
    for event_type, spec in emails.catalogue.all():
        aliases = [spec.postmark_template, *spec.postmark_template_locales.values()]
        for alias in dict.fromkeys(a for a in aliases if a):
            try:
                client.templates.get(alias)
            except ClientError as exc:
                problems.append(f"{spec.name} ({event_type}): Postmark template {alias!r}: {exc}")
    return problems


@templates_app.command("check")
def templates_check(
    postmark: Annotated[
        bool,
        typer.Option(
            "--postmark",
            help="Also ask Postmark (POSTMARK_SERVER_TOKEN, POSTMARK_API_URL) whether every "
            "Postmark template alias of the catalogue exists.",
        ),
    ] = False,
) -> None:
    """Render every email of the catalogue in every locale with sample events; exit 1 with
    one line per problem (a template, a variable or a locale missing). For a team's CI."""
    import requests

    from postroom.emails.samples import check

    emails = _emails()
    problems = check(emails)
    if postmark:
        try:
            problems += _missing_postmark_templates(emails)
        except requests.RequestException as exc:
            typer.echo(f"postroom templates: Postmark does not answer: {exc}", err=True)
            raise typer.Exit(code=UNREACHABLE) from None
    for problem in problems:
        typer.echo(problem, err=True)
    if problems:
        raise typer.Exit(code=1)
    count = len(emails.catalogue.all())
    where = emails.templates_dir or "the built-in templates"
    locales = len(emails.locales())
    typer.echo(
        f"{count} email{'s' * (count != 1)} in {locales} locale{'s' * (locales != 1)} "
        f"({', '.join(emails.locales())}) render from {where}"
    )


@templates_app.command("preview")
def templates_preview(
    name: Annotated[str, typer.Argument(help="The email's name in the catalogue.")],
    locale: Annotated[
        str | None, typer.Option(help="A BCP 47 tag; DEFAULT_LOCALE if not given.")
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option(help="Write NAME.LOCALE.html and .txt here instead of printing."),
    ] = None,
) -> None:
    """Email NAME rendered with a sample event: its subject and text part (and, with
    --out, its HTML part in a file to open in a browser)."""
    from postroom.emails import TemplateProblem
    from postroom.emails.samples import preview

    emails = _emails()
    try:
        shown = preview(emails, name, locale)
    except KeyError:
        known = ", ".join(spec.name for _, spec in emails.catalogue.all())
        typer.echo(f"postroom templates: no email {name!r} in the catalogue ({known})", err=True)
        raise typer.Exit(code=1) from None
    except TemplateProblem as exc:
        typer.echo(f"postroom templates: {exc}", err=True)
        raise typer.Exit(code=1) from None
    if shown.rendered is None:
        alias = emails.postmark_alias(shown.spec, locale)
        typer.echo(f"Postmark template {alias!r} ({shown.locale}) with the model:")
        typer.echo(json.dumps(shown.model, indent=2, sort_keys=True))
        return
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        for suffix, body in (("html", shown.rendered.html), ("txt", shown.rendered.text)):
            path = out / f"{name}.{shown.locale}.{suffix}"
            path.write_text(body, encoding="utf-8")
            typer.echo(f"wrote {path}")
        return
    typer.echo(f"Subject: {shown.rendered.subject}")
    typer.echo(f"Locale: {shown.locale}")
    typer.echo("")
    typer.echo(shown.rendered.text, nl=False)


@templates_app.command("schema")
def templates_schema() -> None:
    """Print the JSON Schema of the emails catalogue (emails.yaml)."""
    from postroom.emails.catalogue import catalogue_schema_json

    typer.echo(catalogue_schema_json(), nl=False)


@templates_app.command("catalogue")
def templates_catalogue() -> None:
    """Print the emails catalogue in effect: a start for a team's own emails.yaml."""
    from postroom.emails.catalogue import BUILT_IN, CATALOGUE_FILE

    emails = _emails()
    team = emails.templates_dir and emails.templates_dir / CATALOGUE_FILE
    path = team if team and team.exists() else BUILT_IN
    typer.echo(path.read_text(encoding="utf-8"), nl=False)


async def _with_notifier_parts(settings: NotifierSettings, work: Any) -> Any:
    from notifier.postmark import Postmark
    from postroom.db import create_engine
    from postroom.outbox import OutboxWriter

    engine = create_engine(settings, application_name="postroom-cli")
    postmark = Postmark(settings)
    try:
        outbox = OutboxWriter(shards=settings.relay_shards, notify=settings.outbox_notify)
        return await work(engine, outbox, postmark)
    finally:
        postmark.close()
        await engine.dispose()


@dlq_app.command("list")
def dlq_list(as_json: JsonOption = False, verbose: VerboseOption = False) -> None:
    """The records on <prefix>.notifier.dlq, with why each is there."""
    from rich.console import Console
    from rich.table import Table

    from notifier.dlq import list_dead_letters

    settings = _load("dlq", NotifierSettings, verbose=verbose, broker=True)
    letters = _run("dlq", list_dead_letters(settings, request_timeout=KAFKA_TIMEOUT), settings)
    if as_json:
        _print_json(
            [
                {
                    "partition": letter.partition,
                    "offset": letter.offset,
                    "reason": letter.reason,
                    "headers": letter.headers,
                }
                for letter in letters
            ]
        )
        return
    if not letters:
        typer.echo("the dead-letter topic is empty")
        return
    table = Table("partition", "offset", "reason", "type", "event id", "from", "error")
    for letter in letters:
        h = letter.headers
        table.add_row(
            str(letter.partition),
            str(letter.offset),
            letter.reason,
            h.get("ce_type", "-"),
            h.get("ce_id", "-"),
            f"{h.get('dlq_topic')}[{h.get('dlq_partition')}]@{h.get('dlq_offset')}",
            h.get("dlq_error", "")[:80],
        )
    Console(width=200).print(table)


@dlq_app.command("replay")
def dlq_replay(
    from_beginning: Annotated[
        bool, typer.Option("--from-beginning", help="Replay records replayed before too.")
    ] = False,
    reason: Annotated[
        str | None,
        typer.Option(help="Only this reason (unreadable, delivery-failed, outcome-unknown)."),
    ] = None,
    verbose: VerboseOption = False,
) -> None:
    """Put dead letters back on the topic they came from (failed notifications back to
    pending first; a deleted user's are held back, left failed; one sent since is skipped);
    each record once unless --from-beginning. A record of another reason than --reason, or
    whose email is still being worked on, is left for a later replay."""
    from rich.console import Console
    from rich.progress import Progress

    from notifier.dlq import Replayed, replay
    from postroom.db import create_engine

    settings = _load("dlq", NotifierSettings, verbose=verbose, database=True, broker=True)

    async def work() -> Replayed:
        engine = create_engine(settings, application_name="postroom-cli")
        try:
            # On stderr, and only on a terminal: stdout holds the outcome, and a failure is
            # one line on stderr.
            console = Console(stderr=True)
            with Progress(transient=True, console=console, disable=not console.is_terminal) as bar:
                task = bar.add_task("replaying", total=None)
                return await replay(
                    settings,
                    engine,
                    from_beginning=from_beginning,
                    reason=reason,
                    progress=lambda done, total: bar.update(task, completed=done, total=total),
                    request_timeout=KAFKA_TIMEOUT,
                )
        finally:
            await engine.dispose()

    done = _run("dlq", work(), settings)
    typer.echo(f"replayed {done.replayed} record(s)")
    if done.held_back:
        typer.echo(
            f"held back {done.held_back} record(s) of deleted users: their emails stay failed "
            "and are never sent"
        )
    if done.skipped:
        typer.echo(f"skipped {done.skipped} record(s) whose emails were sent or settled since")
    if done.left:
        typer.echo(
            f"left {done.left} record(s) whose emails are still being worked on, for a later replay"
        )
    if done.other_reasons:
        typer.echo(f"left {done.other_reasons} record(s) of other reasons, for a replay of theirs")


@suppressions_app.command("list")
def suppressions_list(
    limit: Annotated[int, typer.Option(min=1, max=10_000)] = 100,
    cursor: Annotated[
        str | None,
        typer.Option(help="Where the previous page ended: the cursor it printed (on stderr)."),
    ] = None,
    as_json: JsonOption = False,
    verbose: VerboseOption = False,
) -> None:
    """Suppressed addresses, newest first, LIMIT at a time; when more follow, the command for
    the next page goes to stderr (so --json output stays one JSON list)."""
    from rich.console import Console
    from rich.table import Table

    from notifier import listings

    settings = _load("suppressions", NotifierSettings, verbose=verbose, database=True)

    async def work(engine: Any, _outbox: Any, _postmark: Any) -> listings.Page:
        async with engine.connect() as conn:
            return await listings.suppressions_page(conn, limit=limit, cursor=cursor)

    try:
        page = _run("suppressions", _with_notifier_parts(settings, work), settings)
    except listings.InvalidCursor:
        raise typer.BadParameter("not a cursor this list printed", param_hint="--cursor") from None
    if as_json:
        _print_json(
            [
                {
                    "email": row["email"],
                    "reason": row["reason"],
                    "origin": row["origin"],
                    "created_at": row["created_at"].isoformat(),
                    "details": row["details"],
                }
                for row in page.rows
            ]
        )
    elif not page.rows:
        typer.echo("no more suppressed addresses" if cursor else "no suppressed addresses")
    else:
        table = Table("email", "reason", "origin", "since", "details")
        for row in page.rows:
            table.add_row(
                row["email"],
                row["reason"],
                row["origin"],
                f"{row['created_at']:%Y-%m-%d %H:%M}",
                row["details"] or "",
            )
        Console(width=160).print(table)
    if page.next_cursor is not None:
        typer.echo(
            f"more: postroom suppressions list{' --json' if as_json else ''} --limit {limit} "
            f"--cursor {page.next_cursor}",
            err=True,
        )


@suppressions_app.command("add")
def suppressions_add(
    email: str,
    reason: Annotated[str, typer.Option()] = "ManualSuppression",
    details: Annotated[str | None, typer.Option()] = None,
    verbose: VerboseOption = False,
) -> None:
    """Suppress an address by hand (emits email.suppressed)."""
    from notifier import suppressions as admin

    settings = _load("suppressions", NotifierSettings, verbose=verbose, database=True)

    async def work(engine: Any, outbox: Any, _postmark: Any) -> bool:
        return await admin.add(engine, outbox, email=email, reason=reason, details=details)

    # The list holds address keys: say which one this address is.
    key = address_key(email)
    if not _run("suppressions", _with_notifier_parts(settings, work), settings):
        typer.echo(f"{key} was already suppressed", err=True)
        raise typer.Exit(code=1)
    typer.echo(f"suppressed {key}")


@suppressions_app.command("remove")
def suppressions_remove(email: str, verbose: VerboseOption = False) -> None:
    """Lift a suppression, reactivating the address at Postmark when a bounce made it
    inactive there (emits email.reactivated). Spam complaints cannot be lifted."""
    from notifier import suppressions as admin
    from notifier.postmark import PostmarkUnauthorized, PostmarkUnavailable, RequestRejected

    settings = _load("suppressions", NotifierSettings, verbose=verbose, database=True)

    async def work(engine: Any, outbox: Any, postmark: Any) -> Any:
        # Postmark's errors come back as values: a broken connection to Postmark is not the
        # database being unreachable (which `_run` reports).
        try:
            return await admin.lift(engine, outbox, postmark, email=email)
        except (PostmarkUnavailable, PostmarkUnauthorized, RequestRejected) as exc:
            return exc

    key = address_key(email)
    try:
        lifted = _run("suppressions", _with_notifier_parts(settings, work), settings)
    except admin.NotSuppressed:
        typer.echo(f"{key} is not suppressed", err=True)
        raise typer.Exit(code=1) from None
    except admin.CannotLift:
        typer.echo(f"{key} reported spam: this suppression cannot be lifted", err=True)
        raise typer.Exit(code=1) from None
    if isinstance(lifted, PostmarkUnavailable):
        typer.echo(
            f"Postmark did not answer in time or is unavailable ({lifted}): {key} is "
            "still suppressed; try again later",
            err=True,
        )
        raise typer.Exit(code=POSTMARK_REFUSED)
    if isinstance(lifted, PostmarkUnauthorized | RequestRejected):
        typer.echo(f"Postmark did not reactivate {key}: {lifted}", err=True)
        raise typer.Exit(code=POSTMARK_REFUSED)
    if lifted.reactivated_bounce is None:
        typer.echo(f"lifted {lifted.email}")
    else:
        typer.echo(f"lifted {lifted.email} (bounce {lifted.reactivated_bounce} reactivated)")


if _sigint_before is not None:
    signal.signal(signal.SIGINT, _sigint_before)


def main(argv: list[str] | None = None) -> None:
    try:
        app(args=argv if argv is not None else sys.argv[1:], prog_name="postroom")
    except KeyboardInterrupt:  # before typer runs the command, which answers one with 130
        sys.exit(130)
