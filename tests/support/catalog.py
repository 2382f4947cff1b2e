"""Checking what the services wrote to the outbox against the published event schemas."""

from __future__ import annotations

import json
from pathlib import Path

import asyncpg
import jsonschema_rs

DOCS = Path(__file__).resolve().parents[2] / "docs" / "events"


async def assert_outbox_matches_the_catalogue(db: asyncpg.Connection) -> set[str]:
    """Validate every outbox payload against its type's JSON Schema in `docs/events/`;
    return the event types seen (the outbox must not be empty)."""
    rows = await db.fetch("SELECT event_type, payload::text AS payload FROM outbox ORDER BY id")
    assert rows
    for row in rows:
        schema = json.loads((DOCS / f"{row['event_type']}.json").read_text())
        jsonschema_rs.validate(schema, json.loads(row["payload"]))
    return {row["event_type"] for row in rows}
