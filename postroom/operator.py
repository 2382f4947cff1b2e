"""Read-only views for operators (the `postroom outbox ...` verbs)."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from postroom.db import create_engine
from postroom.models import outbox
from postroom.settings import CommonSettings


async def recent_outbox_rows(settings: CommonSettings, *, limit: int) -> list[sa.Row[Any]]:
    engine = create_engine(settings, application_name="postroom-cli")
    try:
        async with engine.connect() as conn:
            result = await conn.execute(sa.select(outbox).order_by(outbox.c.id.desc()).limit(limit))
            return list(result)
    finally:
        await engine.dispose()
