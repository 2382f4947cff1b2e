"""Keyset cursors: a cursor stands for the row it was made after, for the list and filters it
was made with, and nothing else decodes."""

from __future__ import annotations

import base64
import json
import re
import uuid
from datetime import UTC, datetime, timedelta, timezone

import pytest

from postroom import cursors
from postroom.cursors import InvalidCursor

AT = datetime(2026, 11, 30, 12, 0, 0, 123456, tzinfo=UTC)
FILTERS = {"email": "ada@example.com", "user_id": None, "status": "sent"}


def b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def test_a_cursor_stands_for_its_row_to_the_microsecond() -> None:
    key = str(uuid.uuid4())
    cursor = cursors.encode("notifications", FILTERS, created_at=AT, key=key)

    assert cursors.decode(cursor, "notifications", FILTERS) == (AT, key)
    assert re.fullmatch(r"[A-Za-z0-9_-]+", cursor)  # nothing to escape in a URL


def test_the_longest_key_a_webhook_can_store_still_makes_a_cursor_the_api_takes() -> None:
    # A webhook's Email is stored as given, up to 320 characters, any of them beyond the BMP.
    key = "\N{GRINNING FACE}" * 320
    cursor = cursors.encode("suppressions", {}, created_at=AT, key=key)

    assert len(cursor) <= cursors.MAX_LENGTH
    assert re.fullmatch(cursors.PATTERN, cursor)
    assert cursors.decode(cursor, "suppressions", {}) == (AT, key)


def test_a_cursor_is_refused_with_other_filters_or_by_another_list() -> None:
    cursor = cursors.encode("notifications", FILTERS, created_at=AT, key="k")

    for listing, filters in [
        ("notifications", {**FILTERS, "status": "failed"}),
        ("notifications", {**FILTERS, "email": None}),
        ("notifications", {**FILTERS, "user_id": str(uuid.uuid4())}),
        ("suppressions", FILTERS),
    ]:
        with pytest.raises(InvalidCursor):
            cursors.decode(cursor, listing, filters)


def test_every_single_character_change_is_refused() -> None:
    cursor = cursors.encode("suppressions", {}, created_at=AT, key="ada@example.com")
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    for index, original in enumerate(cursor):
        for replacement in {alphabet[(alphabet.index(original) + 1) % 64], "=", ".", " "}:
            changed = cursor[:index] + replacement + cursor[index + 1 :]
            with pytest.raises(InvalidCursor):
                cursors.decode(changed, "suppressions", {})
    for shortened in (cursor[:-1], cursor[1:], cursor + "A", ""):
        with pytest.raises(InvalidCursor):
            cursors.decode(shortened, "suppressions", {})


def forged(created_at: datetime, key: str) -> str:
    """A cursor with a digest that matches: made by someone who read the code (with JSON's
    escapes, which carry what UTF-8 cannot, such as a lone surrogate)."""
    at = created_at.isoformat()
    digest = cursors._digest("suppressions", {}, at, key)
    return b64(json.dumps([at, key, digest]).encode())


@pytest.mark.parametrize(
    "cursor",
    [
        "garbage!",
        b64(b"\xff\xfe not utf-8"),
        b64(b"not json"),
        b64(b"{}"),
        b64(b'["a", "b"]'),
        b64(json.dumps([1, 2, 3]).encode()),
        b64(b"[" * 3000),
        forged(AT.replace(tzinfo=None), "ada@example.com"),  # no time zone
        forged(datetime(1, 1, 1, tzinfo=timezone(timedelta(hours=5))), "a@b"),  # before year 1
        forged(datetime(9999, 12, 31, 23, tzinfo=timezone(timedelta(hours=-5))), "a@b"),
        forged(AT, "nul\x00@example.com"),
        forged(AT, "lone \ud800 surrogate"),
    ],
    ids=[
        "not-base64",
        "not-utf8",
        "not-json",
        "object",
        "two-items",
        "numbers",
        "deep-nesting",
        "naive-time",
        "before-year-1",
        "after-year-9999",
        "nul",
        "surrogate",
    ],
)
def test_what_postgresql_could_not_take_never_decodes(cursor: str) -> None:
    with pytest.raises(InvalidCursor):
        cursors.decode(cursor, "suppressions", {})
