"""FastAPI dependencies with `Annotated` aliases."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials
from sqlalchemy.ext.asyncio import AsyncEngine

from outbox_relay.outbox import OutboxWriter
from postroom.auth import bearer_scheme, principal_of
from postroom.settings import ApiSettings


async def get_settings(request: Request) -> ApiSettings:
    settings: ApiSettings = request.app.state.settings
    return settings


async def get_engine(request: Request) -> AsyncEngine:
    engine: AsyncEngine = request.app.state.engine
    return engine


async def get_outbox(request: Request) -> OutboxWriter:
    outbox: OutboxWriter = request.app.state.outbox
    return outbox


SettingsDep = Annotated[ApiSettings, Depends(get_settings)]
EngineDep = Annotated[AsyncEngine, Depends(get_engine)]
OutboxDep = Annotated[OutboxWriter, Depends(get_outbox)]


async def require_token(
    settings: SettingsDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer_scheme)],
) -> str:
    """The caller's principal (a digest of its token), or a 401 problem."""
    return principal_of(credentials, settings.api_tokens)


PrincipalDep = Annotated[str, Depends(require_token)]
