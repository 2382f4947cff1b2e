"""The shipped Prometheus alerting rules load, fire on the series that should raise them and
stay quiet on healthy ones (promtool's unit tests), and name only metrics Postroom exports."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.support.metrics import exported_series

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


async def test_the_rules_name_only_metrics_the_processes_export() -> None:
    exported = await exported_series()
    used = set(re.findall(r"\bpostroom_[a-z_]+", (RULES / "alerts.yml").read_text()))
    assert used, "the rules name no metric"
    assert sorted(used - exported.keys()) == []
