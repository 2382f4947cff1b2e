"""The real app or the baseline under several uvicorn workers, for the benchmark's "more
workers" row: `python -m benchmarks.workers real|baseline` (reads WORKERS, API_HOST, API_PORT
and what each app reads).

Each worker is a process of its own that builds the app from the environment (the app
factories take no argument then), under the same uvicorn settings as one worker: auto loop,
no access log, and for the real app the same HTTP protocol as `python -m api`.
"""

from __future__ import annotations

import os
import sys

import uvicorn

from postroom.http_limits import BoundedHeadProtocol

APPS = {"real": "api.app:create_app", "baseline": "benchmarks.baseline_app:create_app"}


def main() -> None:
    kind = sys.argv[1]
    uvicorn.run(
        APPS[kind],
        factory=True,
        workers=int(os.environ.get("WORKERS", "2")),
        host=os.environ.get("API_HOST", "127.0.0.1"),
        port=int(os.environ.get("API_PORT", "8000")),
        access_log=False,
        log_level="warning",
        server_header=False,
        **({"http": BoundedHeadProtocol} if kind == "real" else {}),
    )


if __name__ == "__main__":
    main()
