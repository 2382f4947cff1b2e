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

from pydantic import BaseModel

from postroom.db import Connection
from postroom.problems import IDEMPOTENCY_KEY_REUSED, ProblemError

MAX_KEY_LENGTH = 255
KEY_PATTERN = r"^[\x21-\x7e]+$"  # visible ASCII: what clients put in a header without quoting

# Insert the key, or take over one older than the TTL ($4 seconds); no row back: it is live.
_CLAIM = """
INSERT INTO idempotency_keys (principal, key, request_hash) VALUES ($1, $2, $3)
ON CONFLICT (principal, key) DO UPDATE
    SET request_hash = excluded.request_hash, status_code = NULL, response_body = NULL,
        response_headers = NULL, created_at = now()
    WHERE idempotency_keys.created_at < now() - make_interval(secs => $4)
RETURNING key
"""
_STORED = """
SELECT request_hash, status_code, response_body::text, response_headers::text
FROM idempotency_keys WHERE principal = $1 AND key = $2
"""
_STORE = """
UPDATE idempotency_keys SET status_code = $3, response_body = $4::jsonb,
                            response_headers = $5::jsonb
WHERE principal = $1 AND key = $2
"""


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
    conn: Connection, *, principal: str, key: str, fingerprint: str, ttl: int
) -> StoredAnswer | None:
    """Claim `key` for this transaction, or return the answer stored under it.

    A key older than `ttl` seconds is treated as new. Reusing a live key for another request
    is a 422 problem. The route has already checked the key's shape."""
    if await conn.fetchval(_CLAIM, principal, key, fingerprint, float(ttl)) is not None:
        return None
    stored = await conn.fetchrow(_STORED, principal, key)
    assert stored is not None  # the conflict above saw it, and keys are deleted only when old
    if stored["request_hash"] != fingerprint or stored["status_code"] is None:
        raise ProblemError(
            IDEMPOTENCY_KEY_REUSED, "This Idempotency-Key was already used for a different request."
        )
    return StoredAnswer(
        stored["status_code"],
        json.loads(stored["response_body"]),
        json.loads(stored["response_headers"] or "{}"),
    )


async def store(conn: Connection, *, principal: str, key: str, answer: StoredAnswer) -> None:
    """Record the answer under the key claimed earlier in this transaction."""
    await conn.execute(
        _STORE,
        principal,
        key,
        answer.status_code,
        json.dumps(answer.body),
        json.dumps(answer.headers),
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
        cls,
        *,
        method: str,
        path: str,
        body: BaseModel | None,
        principal: str,
        key: str | None,
        ttl: int,
    ) -> Guard:
        """The guard of one request; without a key it costs nothing (no fingerprint)."""
        if key is None:
            return cls(principal, None, "", ttl)
        return cls(
            principal,
            key,
            request_fingerprint(method, path, body and body.model_dump(mode="json")),
            ttl,
        )

    async def claim_or_replay(self, conn: Connection) -> StoredAnswer | None:
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

    async def remember(self, conn: Connection, answer: StoredAnswer) -> None:
        if self.key is not None:
            await store(conn, principal=self.principal, key=self.key, answer=answer)
