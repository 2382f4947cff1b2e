"""The sandbox's own JSON API, for tests and drills: captured messages, faults, counters."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from sandbox.faults import Faults, FaultsUpdate
from sandbox.state import SandboxDep

router = APIRouter()  # open: health
operator_router = APIRouter()  # the capture API: the server token outside development

_METADATA_PREFIX = "metadata_"


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@operator_router.get("/api/messages")
async def list_messages(request: Request, sandbox: SandboxDep) -> JSONResponse:
    """Captured messages, newest first; `?to=` and `?metadata_<field>=` narrow the list."""
    params = request.query_params
    metadata = {
        key.removeprefix(_METADATA_PREFIX): value
        for key, value in params.items()
        if key.startswith(_METADATA_PREFIX) and len(key) > len(_METADATA_PREFIX)
    }
    found = sandbox.store.search(
        recipient=params.get("to") or None, tag=params.get("tag") or None, metadata=metadata
    )
    return JSONResponse([message.capture_json() for message in found])


@operator_router.get("/api/messages/{message_id}", response_model=None)
async def get_message(message_id: str, sandbox: SandboxDep) -> dict[str, Any] | JSONResponse:
    message = sandbox.store.get(message_id)
    if message is None:
        return JSONResponse(
            {"ErrorCode": 701, "Message": "This message was not found."}, status_code=404
        )
    return message.capture_json()


@operator_router.delete("/api/messages", status_code=204)
async def clear_messages(sandbox: SandboxDep) -> Response:
    """Forget every message, bounce and inactive address: a clean slate for the next test."""
    sandbox.store.clear()
    return Response(status_code=204)


@operator_router.get("/api/faults")
async def get_faults(sandbox: SandboxDep) -> Faults:
    return sandbox.faults.faults


@operator_router.put("/api/faults")
async def put_faults(change: FaultsUpdate, sandbox: SandboxDep) -> Faults:
    """Change some or all faults; the others keep their value."""
    return sandbox.faults.update(change)


@operator_router.delete("/api/faults")
async def reset_faults(sandbox: SandboxDep) -> Faults:
    return sandbox.faults.reset()


@operator_router.get("/api/stats")
async def get_stats(sandbox: SandboxDep) -> dict[str, Any]:
    """Counters since start: send calls, injected faults, captures, webhooks, and how many
    batch calls carried each number of messages (`batch_sizes`)."""
    return sandbox.stats()


@operator_router.get("/api/webhooks")
async def list_webhooks(sandbox: SandboxDep) -> JSONResponse:
    """The latest webhook events and whether the receiver took them, newest first."""
    return JSONResponse([delivery.as_json() for delivery in reversed(sandbox.webhooks.recent)])
