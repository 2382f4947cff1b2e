"""End-to-end: real Postroom processes, spoken to over loopback HTTP."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import schemathesis
from hypothesis import strategies as st

from tests.support.processes import LiveApi, start_api, stop_api

# JSON Schema's "email" format admits reserved domains (example.invalid, localhost) that the
# API rightly refuses, since no mail can reach them; generate deliverable-looking addresses.
schemathesis.openapi.format(
    "email",
    st.from_regex(
        r"[a-z0-9]{1,12}([._+-][a-z0-9]{1,8}){0,2}@[a-z0-9]{1,20}\.example\.com", fullmatch=True
    ),
)


@pytest.fixture
def live_api(database_url: str) -> Iterator[LiveApi]:
    """A `python -m api` process on this test's database."""
    api = start_api(database_url)
    try:
        yield api
    finally:
        stop_api(api)
