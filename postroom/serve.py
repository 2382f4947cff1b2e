"""Running one process: read its settings, set up logs and traces, serve its app under uvicorn.

Every process's `python -m <process>` comes here, so they all start, log and stop alike.
"""

from __future__ import annotations

import gc
import os
import sys
from collections.abc import Callable
from typing import Any, NoReturn, TypeVar

import structlog

from postroom.settings import CommonSettings, ConfigError, load

S = TypeVar("S", bound=CommonSettings)


def serve(
    service: str,
    settings_class: type[S],
    make_app: Callable[[S], Any],
    *,
    address: Callable[[S], tuple[str, int]],
    grace: int = 60,
    workers: Callable[[S], int] = lambda settings: 1,
    worker_factory: str = "",
) -> None:
    """Serve `make_app(settings)` until SIGTERM or Ctrl-C, which end the app's lifespan and so
    stop its work gracefully. A bad setting exits with status 2 and a one-line reason.

    With more than one worker, uvicorn starts that many processes on the one socket, each
    building its app by calling `worker_factory` ("module:function", see `worker_app`).

    uvicorn's access log stays off: it would print query strings, which carry verification
    tokens (ACCESS_LOG logs route templates instead)."""
    import uvicorn

    from postroom.http_limits import BoundedHeadProtocol
    from postroom.logs import configure_logging
    from postroom.tracing import configure_tracing

    try:
        settings = load(settings_class)
    except ConfigError as exc:
        _refuse_to_start(service, str(exc))
    # Before the app is built: its parts bind their loggers as they are made.
    configure_logging(
        settings.log_level, json=settings.app_env != "development", service=f"postroom-{service}"
    )
    configure_tracing(f"postroom-{service}")
    host, port = address(settings)
    count = workers(settings)
    try:
        app = make_app(settings)  # with workers too: what only the app checks fails here, once
    except ConfigError as exc:  # what only the app can check (the emails' templates)
        _refuse_to_start(service, str(exc))
    if count > 1:
        assert worker_factory, f"{service} has no worker factory"
        del app
    uvicorn.run(
        worker_factory if count > 1 else app,
        factory=count > 1,
        workers=count if count > 1 else None,
        host=host,
        port=port,
        access_log=False,
        log_config=None,  # uvicorn's own lines go through configure_logging's stream
        log_level="warning",
        server_header=False,
        timeout_graceful_shutdown=grace,
        http=BoundedHeadProtocol,  # 431 past 32 KiB or 100 header fields
    )


def worker_app(service: str, settings_class: type[S], make_app: Callable[[S], Any]) -> Any:
    """One worker's app when a process runs several (`serve`'s `workers`): each worker is a
    process of its own, started afresh, so it reads its settings and sets up its logs and
    traces again, as `serve` did in the parent (which has already refused bad settings)."""
    from postroom.logs import configure_logging
    from postroom.tracing import configure_tracing

    settings = load(settings_class)
    configure_logging(
        settings.log_level, json=settings.app_env != "development", service=f"postroom-{service}"
    )
    configure_tracing(f"postroom-{service}")
    return make_app(settings)


def _refuse_to_start(service: str, reason: str) -> NoReturn:
    """Exit with status 2 and one line: readable in development, JSON elsewhere, since the
    settings could not say which (APP_ENV is read as it stands)."""
    from postroom.logs import configure_logging

    if os.environ.get("APP_ENV", "development").strip().lower() == "development":
        print(f"postroom {service}: configuration error: {reason}", file=sys.stderr)
    else:
        configure_logging("error", json=True, service=f"postroom-{service}")
        structlog.get_logger("postroom.settings").error("configuration error", reason=reason)
    raise SystemExit(2)


def freeze_heap() -> None:
    """Move everything alive now (modules, routes, schemas, pools: what start-up built) out
    of the garbage collector's sight. A process that keeps its start-up objects scanned
    pays a full collection of all of them every so often: 50-70 ms in the api under load,
    which is its p99. Call once, at the end of start-up (an app's lifespan)."""
    gc.collect()
    gc.freeze()
