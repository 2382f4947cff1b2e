"""FastAPI dependencies with `Annotated` aliases."""

from __future__ import annotations

import hashlib
import hmac
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.ext.asyncio import AsyncEngine

from api.problems import ProblemError
from outbox_relay.outbox import OutboxWriter
from postroom.settings import ApiSettings


def get_settings(request: Request) -> ApiSettings:
    settings: ApiSettings = request.app.state.settings
    return settings


def get_engine(request: Request) -> AsyncEngine:
    engine: AsyncEngine = request.app.state.engine
    return engine


def get_outbox(request: Request) -> OutboxWriter:
    outbox: OutboxWriter = request.app.state.outbox
    return outbox


SettingsDep = Annotated[ApiSettings, Depends(get_settings)]
EngineDep = Annotated[AsyncEngine, Depends(get_engine)]
OutboxDep = Annotated[OutboxWriter, Depends(get_outbox)]

_bearer = HTTPBearer(auto_error=False, description="A token from API_TOKENS.")


def _unauthorized(detail: str) -> ProblemError:
    return ProblemError(401, "unauthorized", detail, headers={"WWW-Authenticate": "Bearer"})


def require_token(
    settings: SettingsDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> str:
    """The caller's principal (a digest of its token), or a 401 problem."""
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise _unauthorized("Send Authorization: Bearer <token>.")
    presented = credentials.credentials.encode()
    matched = False
    # Compare against every configured token, each in constant time, without stopping early,
    # so the answer's timing says nothing about which token (or how much of one) matched.
    for token in settings.api_tokens:
        matched |= hmac.compare_digest(presented, token.get_secret_value().encode())
    if not matched:
        raise _unauthorized("The bearer token is not valid.")
    return hashlib.sha256(presented).hexdigest()[:32]


PrincipalDep = Annotated[str, Depends(require_token)]
