"""The yardstick for `POST /v1/users`: a minimal FastAPI + asyncpg handler doing the same two
inserts as the real route, in one transaction, with the same `pg_notify` on the outbox insert.

No SQLAlchemy, no middleware, no auth, no event models: what is left is the cost of FastAPI,
pydantic and asyncpg themselves. Run with `python -m benchmarks.baseline_app` (reads
DATABASE_URL, API_HOST, API_PORT, DATABASE_POOL_SIZE).
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

SHARDS = 8

INSERT_USER = """
INSERT INTO users (id, email, name) VALUES ($1, $2, $3)
ON CONFLICT (lower(email)) DO NOTHING
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

HEADERS = json.dumps({"ce_source": "/postroom/api"})


class UserIn(BaseModel):
    email: str
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
            row = await conn.fetchrow(INSERT_USER, uuid.uuid4(), body.email, body.name)
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

    return app


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
