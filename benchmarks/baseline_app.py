"""The yardsticks for `POST /v1/users` and `PATCH /v1/users/{id}`: the obvious FastAPI + asyncpg
handlers, each writing the user and its outbox row in one transaction, with the same
`pg_notify` on the outbox insert.

POST inserts the user, then the event; PATCH updates the name, then inserts `user.updated`.
No middleware, no auth, no idempotency, no event models, no email validation: what is left is
the cost of FastAPI, pydantic and asyncpg themselves. Run with `python -m
benchmarks.baseline_app` (reads DATABASE_URL, API_HOST, API_PORT, DATABASE_POOL_SIZE), or
under several workers with `python -m benchmarks.workers baseline`.
"""

from __future__ import annotations

import json
import os
import uuid
import zlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime

import asyncpg
import uvicorn
from fastapi import FastAPI, HTTPException, Request, Response
from pydantic import BaseModel

from postroom.addresses import address_key

SHARDS = 8

INSERT_USER = """
INSERT INTO users (id, email, email_key, name) VALUES ($1, $2, $4, $3)
ON CONFLICT (email_key) DO NOTHING
RETURNING id, email, name, email_verified_at, version, created_at, updated_at
"""

INSERT_EVENT = """
WITH inserted AS (
    INSERT INTO outbox (event_id, aggregate_type, aggregate_id, event_type, payload, headers, shard)
    VALUES ($1, 'user', $2, 'user.registered', $3::jsonb, $4::jsonb, $5)
    RETURNING id
)
SELECT id, pg_notify('postroom_outbox', '') FROM inserted
"""

UPDATE_NAME = """
UPDATE users SET name = $2, version = version + 1, updated_at = now() WHERE id = $1
RETURNING id, email, name, email_verified_at, version, created_at, updated_at
"""

INSERT_UPDATED = """
WITH inserted AS (
    INSERT INTO outbox (event_id, aggregate_type, aggregate_id, event_type, payload, headers, shard)
    VALUES ($1, 'user', $2, 'user.updated', $3::jsonb, $4::jsonb, $5)
    RETURNING id
)
SELECT id, pg_notify('postroom_outbox', '') FROM inserted
"""

HEADERS = json.dumps({"ce_source": "/postroom/api"})


class UserIn(BaseModel):
    email: str
    name: str


class UserPatchIn(BaseModel):
    name: str


class UserOut(BaseModel):
    id: uuid.UUID
    email: str
    name: str
    email_verified: bool
    email_verified_at: datetime | None
    version: int
    created_at: datetime
    updated_at: datetime


def plain_dsn(url: str) -> str:
    return url.replace("postgresql+asyncpg://", "postgresql://", 1)


def create_app() -> FastAPI:
    dsn = plain_dsn(os.environ["DATABASE_URL"])
    pool_size = int(os.environ.get("DATABASE_POOL_SIZE", "10"))

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.pool = await asyncpg.create_pool(dsn, min_size=pool_size, max_size=pool_size)
        try:
            yield
        finally:
            await app.state.pool.close()

    app = FastAPI(lifespan=lifespan)

    @app.post("/v1/users", status_code=201, response_model=UserOut)
    async def create_user(body: UserIn, request: Request, response: Response) -> UserOut:
        pool: asyncpg.Pool = request.app.state.pool
        async with pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(
                INSERT_USER, uuid.uuid4(), body.email, body.name, address_key(body.email)
            )
            if row is None:
                raise HTTPException(409, "email taken")
            user_id = str(row["id"])
            payload = {
                "user_id": user_id,
                "version": row["version"],
                "email": row["email"],
                "name": row["name"],
                "registered_at": row["created_at"].isoformat(),
            }
            await conn.fetchrow(
                INSERT_EVENT,
                uuid.uuid4(),
                user_id,
                json.dumps(payload),
                HEADERS,
                zlib.crc32(user_id.encode()) % SHARDS,
            )
        response.headers["Location"] = f"/v1/users/{user_id}"
        return user_out(row)

    @app.patch("/v1/users/{user_id}", response_model=UserOut)
    async def patch_user(user_id: uuid.UUID, body: UserPatchIn, request: Request) -> UserOut:
        pool: asyncpg.Pool = request.app.state.pool
        async with pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(UPDATE_NAME, user_id, body.name)
            if row is None:
                raise HTTPException(404, "no such user")
            key = str(user_id)
            payload = {
                "user_id": key,
                "version": row["version"],
                "email": row["email"],
                "name": row["name"],
                "changed": ["name"],
            }
            await conn.fetchrow(
                INSERT_UPDATED,
                uuid.uuid4(),
                key,
                json.dumps(payload),
                HEADERS,
                zlib.crc32(key.encode()) % SHARDS,
            )
        return user_out(row)

    return app


def user_out(row: asyncpg.Record) -> UserOut:
    return UserOut(
        id=row["id"],
        email=row["email"],
        name=row["name"],
        email_verified=row["email_verified_at"] is not None,
        email_verified_at=row["email_verified_at"],
        version=row["version"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )


def main() -> None:
    # The same uvicorn settings as `postroom api`: one worker, auto loop and http, no access log.
    uvicorn.run(
        create_app(),
        host=os.environ.get("API_HOST", "127.0.0.1"),
        port=int(os.environ.get("API_PORT", "8000")),
        access_log=False,
        log_level=os.environ.get("LOG_LEVEL", "info"),
        server_header=False,
    )


if __name__ == "__main__":
    main()
