"""Structured logging, one stream in every process: JSON lines in staging and production,
readable lines in development. structlog's own loggers and the standard library's (uvicorn,
aiokafka, SQLAlchemy, asyncpg, warnings) go through the same processors and the same
renderer, so every line carries the time, the level, the logger's name, the service and,
inside a traced request, the trace and span ids. Secrets and tokens are never passed to a
logger."""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from typing import Any, TextIO

import structlog

from postroom.tracing import add_trace_ids

# Libraries that narrate their normal work at INFO (group joins, metadata refreshes).
_QUIET = ("aiokafka", "kafka", "uvicorn.error", "httpx")


class _StartingBroker(logging.Filter):
    """aiokafka logs ERROR when a broker that has just started has no group coordinator
    yet, and then simply asks again: a warning, which is what it is (a newcomer's first
    `make dev` showed an "error" otherwise). A coordinator that stays away still says so."""

    def filter(self, record: logging.LogRecord) -> bool:
        if (
            record.levelno == logging.ERROR
            and "GroupCoordinatorNotAvailable" in record.getMessage()
        ):
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


def _service(name: str) -> structlog.types.Processor:
    def add_service(
        _: Any, __: str, event_dict: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        event_dict.setdefault("service", name)
        return event_dict

    return add_service


class _NamedPrintLogger(structlog.PrintLogger):
    """structlog's fast printer, carrying the name given to `structlog.get_logger(name)` so
    that its lines name their logger as the standard library's do."""

    def __init__(self, file: TextIO, name: str) -> None:
        super().__init__(file)
        self.name = name
        self._stream = file

    def msg(self, message: str) -> None:
        # One write per line, newline included: print() writes the two apart, and with
        # several processes on one stream (API_WORKERS, unbuffered in the image) another's
        # line could land between them, joining two JSON lines into one.
        with self._lock:
            self._stream.write(message + "\n")
            self._stream.flush()

    log = debug = info = warn = warning = msg
    fatal = failure = err = error = critical = exception = msg


class _NamedPrintLoggerFactory:
    def __init__(self, file: TextIO) -> None:
        self.file = file  # the stream at configuration time, as the stdlib handler's

    def __call__(self, *args: Any) -> _NamedPrintLogger:
        return _NamedPrintLogger(self.file, str(args[0]) if args else "postroom")


def configure_logging(
    level: str = "info", *, json: bool = True, service: str | None = None
) -> None:
    numeric = logging.getLevelName(level.upper())
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer()
        if json
        # Plain tracebacks: a rich one shows local variables, which hold emails and tokens.
        else structlog.dev.ConsoleRenderer(
            colors=False, exception_formatter=structlog.dev.plain_traceback
        )
    )
    shared: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        add_trace_ids,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        # A foreign record's logger name, or the name our printer carries.
        structlog.stdlib.add_logger_name,
    ]
    if service is not None:
        shared.append(_service(service))

    # The standard library's records: rendered by structlog, on the same stream.
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                renderer,
            ],
        )
    )
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(numeric)
    for name in _QUIET:
        logging.getLogger(name).setLevel(max(numeric, logging.WARNING))
    coordinator = logging.getLogger("aiokafka.consumer.group_coordinator")
    if not any(isinstance(f, _StartingBroker) for f in coordinator.filters):
        coordinator.addFilter(_StartingBroker())
    logging.captureWarnings(True)

    # structlog's own loggers print straight to the stream: no trip through `logging`.
    structlog.configure(
        processors=[*shared, structlog.processors.format_exc_info, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=_NamedPrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=True,
    )
