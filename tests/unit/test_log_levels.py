"""A broker that has just started has no group coordinator for a moment; aiokafka says so at
ERROR and asks again. Postroom's logs say it at WARNING: a first `make dev` shows no error
that is not one. Other errors of that logger keep their level."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator

import pytest
import structlog
from aiokafka.errors import GroupCoordinatorNotAvailableError, KafkaConnectionError

from postroom.logs import configure_logging


@pytest.fixture(autouse=True)
def _logging_put_back() -> Iterator[None]:
    """configure_logging sets the process's root handler to this test's captured stream;
    the tests after it must not write to that stream once it is closed."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    structlog_config = structlog.get_config()
    yield
    root.handlers, root.level = handlers, level
    structlog.configure(**structlog_config)


def logged(capsys: pytest.CaptureFixture[str], error: Exception) -> str:
    configure_logging("info", json=True, service="postroom-notifier")
    logging.getLogger("aiokafka.consumer.group_coordinator").error(
        "Group Coordinator Request failed: %s", error
    )
    [line] = capsys.readouterr().err.splitlines()
    level: str = json.loads(line)["level"]
    return level


def test_a_coordinator_not_there_yet_is_a_warning(capsys: pytest.CaptureFixture[str]) -> None:
    assert logged(capsys, GroupCoordinatorNotAvailableError()) == "warning"


def test_other_coordinator_errors_stay_errors(capsys: pytest.CaptureFixture[str]) -> None:
    assert logged(capsys, KafkaConnectionError("no route")) == "error"
