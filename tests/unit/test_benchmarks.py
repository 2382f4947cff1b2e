"""Every benchmark still loads: they run by hand, one command each, so nothing else would
notice a name they import going away."""

import importlib
from pathlib import Path

import pytest

BENCHMARKS = sorted(
    path.stem
    for path in (Path(__file__).resolve().parents[2] / "benchmarks").glob("*.py")
    if path.stem != "__init__"
)


def test_there_are_benchmarks() -> None:
    assert {"post_users", "relay", "notifier"} <= set(BENCHMARKS)


@pytest.mark.parametrize("name", BENCHMARKS)
def test_the_benchmark_loads(name: str) -> None:
    module = importlib.import_module(f"benchmarks.{name}")
    assert module.__file__ is not None
