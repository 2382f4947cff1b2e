"""Structured logging, the same shape in every process: JSON lines in staging and production,
readable lines in development. Secrets and tokens are never passed to a logger."""

from __future__ import annotations

import logging
import sys

import structlog

from postroom.tracing import add_trace_ids

# Libraries that narrate their normal work at INFO (group joins, metadata refreshes).
_QUIET = ("aiokafka", "kafka", "uvicorn.error", "httpx")


def configure_logging(level: str = "info", *, json: bool = True) -> None:
    numeric = logging.getLevelName(level.upper())
    logging.basicConfig(
        stream=sys.stderr, level=numeric, format="%(name)s: %(message)s", force=True
    )
    for name in _QUIET:
        logging.getLogger(name).setLevel(max(numeric, logging.WARNING))
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer()
        if json
        # Plain tracebacks: a rich one shows local variables, which hold emails and tokens.
        else structlog.dev.ConsoleRenderer(
            colors=False, exception_formatter=structlog.dev.plain_traceback
        )
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            add_trace_ids,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
