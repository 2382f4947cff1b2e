"""Opaque keyset cursors for lists served newest first, by (created_at, a unique key).

A cursor holds the sort key of the last row a page showed and a digest binding it to the
list and the filters it was made with: URL-safe base64 of `[created_at, key, digest]`. The
next page is the rows strictly older than that key, so rows inserted meanwhile never make a
page repeat or skip an older row.

A cursor given with other filters, to another list, or altered in any way fails the digest
and is refused (`InvalidCursor`); the request must repeat the filters it was made with, so
its URL always says what it lists. The digest is not a signature: a cursor is no secret and
grants nothing, as whoever can forge one may list the same rows from the start.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Mapping
from datetime import UTC, datetime

# A key is a uuid or an email address (at most a few hundred characters).
MAX_LENGTH = 4096
PATTERN = r"^[A-Za-z0-9_-]+$"  # URL-safe base64 without padding: nothing to escape in a URL


class InvalidCursor(ValueError):
    """Not a cursor this list gave with these filters."""


def _digest(listing: str, filters: Mapping[str, str | None], created_at: str, key: str) -> str:
    given = {name: value for name, value in sorted(filters.items()) if value is not None}
    canonical = json.dumps([listing, given, created_at, key], separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def encode(
    listing: str, filters: Mapping[str, str | None], *, created_at: datetime, key: str
) -> str:
    """The cursor after the row (`created_at`, `key`) of `listing` filtered by `filters`."""
    at = created_at.isoformat()
    # Not ASCII-escaped: a key of 320 characters beyond the BMP (an address a webhook stored)
    # stays well inside MAX_LENGTH as UTF-8, where \U escapes would pass it.
    payload = json.dumps(
        [at, key, _digest(listing, filters, at, key)], separators=(",", ":"), ensure_ascii=False
    )
    return base64.urlsafe_b64encode(payload.encode()).decode().rstrip("=")


def decode(cursor: str, listing: str, filters: Mapping[str, str | None]) -> tuple[datetime, str]:
    """The (created_at, key) a cursor of `listing` with `filters` stands for, or
    InvalidCursor."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        if base64.urlsafe_b64encode(raw).decode().rstrip("=") != cursor:
            raise ValueError("not canonical base64")  # stray characters, which b64decode skips
        at, key, digest = json.loads(raw)
        if not (isinstance(at, str) and isinstance(key, str) and isinstance(digest, str)):
            raise ValueError("not a cursor")
        if digest != _digest(listing, filters, at, key):
            raise ValueError("digest mismatch")
        created_at = datetime.fromisoformat(at)
        if created_at.tzinfo is None:
            raise ValueError("no time zone")
        # What the query binds must be a time and text PostgreSQL holds (no NUL, no lone
        # surrogate), even in a cursor forged with a matching digest.
        created_at = created_at.astimezone(UTC)
        if "\x00" in key:
            raise ValueError("NUL in key")
        key.encode()
    except (
        binascii.Error,
        UnicodeError,
        TypeError,
        ValueError,
        OverflowError,
        RecursionError,
    ) as exc:
        raise InvalidCursor(type(exc).__name__) from None
    return created_at, key
