"""`Idempotency-Key` for POST routes.

The key row is inserted in the same transaction as the work it guards. A second request with
the same key blocks on that insert until the first commits or rolls back (PostgreSQL waits on
the in-flight unique entry), then either replays the stored answer or, if the first rolled
back, does the work itself. Only successful answers are stored: an error leaves no trace, so
retrying it runs again.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncConnection

from postroom.models import idempotency_keys
from postroom.problems import ProblemError

MAX_KEY_LENGTH = 255
KEY_PATTERN = r"^[\x21-\x7e]+$"  # visible ASCII: what clients put in a header without quoting


@dataclass(frozen=True, slots=True)
class StoredAnswer:
    status_code: int
    body: Any
    headers: dict[str, str]


def request_fingerprint(method: str, path: str, body: Any) -> str:
    """A hash of what the request asks for; JSON key order and spacing do not matter."""
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(f"{method} {path}\n{canonical}".encode()).hexdigest()


async def claim(
    conn: AsyncConnection, *, principal: str, key: str, fingerprint: str, ttl: int
) -> StoredAnswer | None:
    """Claim `key` for this transaction, or return the answer stored under it.

    A key older than `ttl` seconds is treated as new. Reusing a live key for another request
    is a 422 problem. The route has already checked the key's shape."""
    expiry = sa.func.now() - sa.func.make_interval(0, 0, 0, 0, 0, 0, ttl)
    inserted = (
        await conn.execute(
            pg_insert(idempotency_keys)
            .values(principal=principal, key=key, request_hash=fingerprint)
            .on_conflict_do_update(
                index_elements=[idempotency_keys.c.principal, idempotency_keys.c.key],
                set_={
                    "request_hash": fingerprint,
                    "status_code": None,
                    "response_body": None,
                    "response_headers": None,
                    "created_at": sa.func.now(),
                },
                where=idempotency_keys.c.created_at < expiry,
            )
            .returning(idempotency_keys.c.key)
        )
    ).one_or_none()
    if inserted is not None:
        return None
    stored = (
        await conn.execute(
            sa.select(
                idempotency_keys.c.request_hash,
                idempotency_keys.c.status_code,
                idempotency_keys.c.response_body,
                idempotency_keys.c.response_headers,
            ).where(idempotency_keys.c.principal == principal, idempotency_keys.c.key == key)
        )
    ).one()
    if stored.request_hash != fingerprint or stored.status_code is None:
        raise ProblemError(
            422,
            "idempotency-key-reused",
            "This Idempotency-Key was already used for a different request.",
            title="Idempotency key reused",
        )
    return StoredAnswer(stored.status_code, stored.response_body, stored.response_headers or {})


async def store(conn: AsyncConnection, *, principal: str, key: str, answer: StoredAnswer) -> None:
    """Record the answer under the key claimed earlier in this transaction."""
    await conn.execute(
        sa.update(idempotency_keys)
        .where(idempotency_keys.c.principal == principal, idempotency_keys.c.key == key)
        .values(
            status_code=answer.status_code,
            response_body=answer.body,
            response_headers=answer.headers,
        )
    )


@dataclass(frozen=True, slots=True)
class Guard:
    """One POST's idempotency: a no-op when the request carries no key."""

    principal: str
    key: str | None
    fingerprint: str
    ttl: int

    @classmethod
    def of(
        cls, *, method: str, path: str, body: Any, principal: str, key: str | None, ttl: int
    ) -> Guard:
        return cls(principal, key, request_fingerprint(method, path, body), ttl)

    async def claim_or_replay(self, conn: AsyncConnection) -> StoredAnswer | None:
        """Claim the key for this request (None: go on), or the answer stored for it by the
        first request (replay it)."""
        if self.key is None:
            return None
        return await claim(
            conn,
            principal=self.principal,
            key=self.key,
            fingerprint=self.fingerprint,
            ttl=self.ttl,
        )

    async def remember(self, conn: AsyncConnection, answer: StoredAnswer) -> None:
        if self.key is not None:
            await store(conn, principal=self.principal, key=self.key, answer=answer)
