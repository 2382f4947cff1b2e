"""FastAPI dependencies with `Annotated` aliases."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from outbox_relay.outbox import OutboxWriter
from postroom.settings import ApiSettings
from postroom.web import EngineDep, PrincipalDep

__all__ = ["EngineDep", "OutboxDep", "PrincipalDep", "SettingsDep"]


async def get_settings(request: Request) -> ApiSettings:
    settings: ApiSettings = request.app.state.settings
    return settings


async def get_outbox(request: Request) -> OutboxWriter:
    outbox: OutboxWriter = request.app.state.outbox
    return outbox


SettingsDep = Annotated[ApiSettings, Depends(get_settings)]
OutboxDep = Annotated[OutboxWriter, Depends(get_outbox)]
