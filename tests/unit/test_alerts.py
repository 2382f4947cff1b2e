"""The shipped Prometheus alerting rules load, fire on the series that should raise them and
stay quiet on healthy ones (promtool's unit tests), and name only metrics Postroom exports."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import httpx
import pytest
from prometheus_client import CollectorRegistry

from api.app import create_app as create_api
from notifier.app import create_app as create_notifier
from outbox_relay.app import create_app as create_relay
from tests.support.settings import (
    make_api_settings,
    make_notifier_settings,
    make_relay_settings,
)

RULES = Path(__file__).resolve().parents[2] / "deploy" / "prometheus"
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool is not installed (apt install prometheus)"
)


@needs_promtool
def test_the_rules_are_valid() -> None:
    assert PROMTOOL is not None
    done = subprocess.run(
        [PROMTOOL, "check", "rules", str(RULES / "alerts.yml")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


@needs_promtool
def test_each_alert_fires_when_it_should_and_only_then() -> None:
    assert PROMTOOL is not None
    done = subprocess.run(
        [PROMTOOL, "test", "rules", "alerts_test.yml"],
        cwd=RULES,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def exported_names(registry: CollectorRegistry) -> set[str]:
    names: set[str] = set()
    for family in registry.collect():
        names.add(family.name)
        if family.type == "counter":  # exported as <name>_total, even before a first series
            names.add(f"{family.name}_total")
    return names


async def test_the_rules_name_only_metrics_the_processes_export() -> None:
    url = "postgresql://postgres@127.0.0.1:9/none"  # never connected: no lifespan runs
    exported = set()
    for app in (
        create_api(make_api_settings(url)),
        create_relay(make_relay_settings(url, "127.0.0.1:9")),
        create_notifier(
            make_notifier_settings(url, "127.0.0.1:9", "http://127.0.0.1:9/", "rules"),
            consume=False,
        ),
    ):
        # One request builds the middleware, which registers the request metrics.
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
            assert (await http.get("/healthz")).status_code == 200
        exported |= exported_names(app.state.registry)
    used = set(re.findall(r"\bpostroom_[a-z_]+", (RULES / "alerts.yml").read_text()))
    assert used, "the rules name no metric"
    assert sorted(used - exported) == []
