"""Waiting for a process we started to answer, never a bare sleep."""

from __future__ import annotations

import subprocess
import time

import httpx


def wait_until_answers(
    url: str, process: subprocess.Popen[bytes], *, name: str, within: float = 30
) -> None:
    """Return once `url` answers 200; fail if the process exits or time runs out."""
    deadline = time.monotonic() + within
    while True:
        assert process.poll() is None, f"the {name} exited during start-up"
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            process.kill()
            raise AssertionError(f"the {name} did not answer {url} within {within:.0f} s")
        time.sleep(0.05)
