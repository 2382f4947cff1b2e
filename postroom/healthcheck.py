"""`python -m postroom.healthcheck`: the image's health check, whichever process it runs.

A container runs one process; it is healthy when that process answers `/healthz` on its
port. The ports are the processes' own settings (`API_PORT`, `NOTIFIER_PORT`,
`RELAY_METRICS_PORT`, `SANDBOX_PORT`): the one that answers is the one running, and a
container where none answers is unhealthy (exit 1).
"""

from __future__ import annotations

import os
import sys
import urllib.request

# Each process's port setting and its default.
PORTS = {"API_PORT": 8000, "NOTIFIER_PORT": 8001, "RELAY_METRICS_PORT": 8002, "SANDBOX_PORT": 8025}


def healthy(timeout: float = 2.0) -> bool:
    for name, default in PORTS.items():
        url = f"http://127.0.0.1:{os.environ.get(name, default)}/healthz"
        try:
            with urllib.request.urlopen(url, timeout=timeout) as answer:
                if answer.status == 200:
                    return True
        except OSError:
            continue
    return False


if __name__ == "__main__":
    sys.exit(0 if healthy() else 1)
