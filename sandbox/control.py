"""The sandbox's own JSON API, for tests, drills and scripts: the dev inbox's messages, faults,
counters. Deleting here empties the dev inbox only: Postmark's record of what was sent, which
the outbound search reads for the notifier's send-once check, stays (see `store.py`)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from postroom.problems import VALIDATION_ERROR, ProblemType, problem_response
from postroom.web import JsonBodyRoute
from sandbox.faults import Faults, FaultsUpdate
from sandbox.inbox_filter import InboxFilter, unknown_params
from sandbox.state import OperatorDep, SandboxDep

router = APIRouter()  # open: health
# The capture API (the server token outside development); a body that is not JSON is a 415,
# as on every Postroom process.
operator_router = APIRouter(route_class=JsonBodyRoute, dependencies=[OperatorDep])

MESSAGE_NOT_FOUND = ProblemType(
    "message-not-found",
    404,
    "Message not found",
    "No message in the dev inbox has this id: it was never captured, or it was deleted.",
)


def _not_found(request: Request) -> JSONResponse:
    return problem_response(
        MESSAGE_NOT_FOUND,
        "No message in the dev inbox has this id; it may have been deleted.",
        instance=request.url.path,
    )


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


router.add_api_route("/healthz", healthz, methods=["HEAD"], include_in_schema=False)


@operator_router.get("/api/messages")
async def list_messages(request: Request, sandbox: SandboxDep) -> JSONResponse:
    """The dev inbox's messages, newest first, narrowed as its search box does: `q` (in a
    recipient, the subject or the tag), `to` (a whole address), `subject` (part of it), `tag`,
    `metadata_<field>`; case-insensitive but for metadata. Any other parameter is a 422."""
    unknown = unknown_params(request.query_params)
    if unknown:
        return problem_response(
            VALIDATION_ERROR,
            "The request is not valid; see errors.",
            instance=request.url.path,
            errors=[
                {
                    "loc": ["query", name],
                    "msg": "Unknown query parameter",
                    "type": "extra_forbidden",
                }
                for name in unknown
            ],
        )
    found = sandbox.store.inbox(InboxFilter.from_params(request.query_params))
    return JSONResponse([message.capture_json() for message in found])


@operator_router.get("/api/messages/{message_id}", response_model=None)
async def get_message(
    message_id: str, request: Request, sandbox: SandboxDep
) -> dict[str, Any] | JSONResponse:
    message = sandbox.store.in_inbox(message_id)
    return _not_found(request) if message is None else message.capture_json()


@operator_router.get("/api/messages/{message_id}/raw", response_model=None)
async def get_raw_message(
    message_id: str, request: Request, sandbox: SandboxDep
) -> dict[str, Any] | JSONResponse:
    """The raw view: every field as Postmark received it as a header line, then the text part
    and the HTML part's source."""
    message = sandbox.store.in_inbox(message_id)
    return _not_found(request) if message is None else message.raw_json()


@operator_router.delete("/api/messages/{message_id}", status_code=204, response_model=None)
async def delete_message(message_id: str, request: Request, sandbox: SandboxDep) -> Response:
    """Delete one message from the dev inbox."""
    if not sandbox.store.delete_from_inbox(message_id):
        return _not_found(request)
    return Response(status_code=204)


@operator_router.delete("/api/messages", status_code=204)
async def clear_messages(sandbox: SandboxDep) -> Response:
    """Empty the dev inbox and forget every bounce and inactive address: a clean slate for the
    next test."""
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
