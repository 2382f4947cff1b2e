"""The part of Postmark's HTTP API that Postroom uses, answered in Postmark's shapes and codes."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from sandbox.bounces import Bounce
from sandbox.faults import CallKind
from sandbox.messages import DEFAULT_STREAM, PostmarkError
from sandbox.state import Sandbox, SandboxDep
from sandbox.templates import MAX_TEMPLATE_PAGE

router = APIRouter()

MAX_BATCH = 500
MAX_MESSAGE_BYTES = 10 * 1024 * 1024
MAX_BATCH_BYTES = 50 * 1024 * 1024
MAX_PAGE = 500
MAX_SEARCH_DEPTH = 10_000
MAX_ID_DIGITS = len(str(2**64 - 1))
_AUTH_HEADER = "x-postmark-server-token"
_METADATA_PREFIX = "metadata_"


def error_response(exc: PostmarkError) -> JSONResponse:
    return JSONResponse(exc.body(), status_code=exc.status)


def _answer(sandbox: Sandbox, kind: CallKind, response: Response) -> Response:
    """The answer as it is, or trickling a byte at a time when a fault says so."""
    delay = sandbox.faults.trickle(kind)
    if not delay:
        return response
    body = bytes(response.body)

    async def one_byte_at_a_time() -> AsyncIterator[bytes]:
        for at in range(len(body)):
            if at:
                await asyncio.sleep(delay)
            yield body[at : at + 1]

    # The headers (Content-Length among them) go at once: only the body trickles.
    return StreamingResponse(
        one_byte_at_a_time(), status_code=response.status_code, headers=dict(response.headers)
    )


def _authorize(request: Request, sandbox: Sandbox) -> str:
    token = request.headers.get(_AUTH_HEADER)
    if not token:
        raise PostmarkError(
            401, 10, "No Server token was given: send it in the X-Postmark-Server-Token header."
        )
    kind = sandbox.token_kind(token)
    if kind is None:
        raise PostmarkError(
            401, 10, "The Server token in the X-Postmark-Server-Token header is not valid."
        )
    return kind


def _accepts_json(request: Request) -> bool:
    accept = request.headers.get("accept", "").strip()
    if not accept:
        return True  # no preference stated: JSON is as good as anything
    kinds = {part.split(";")[0].strip().lower() for part in accept.split(",")}
    return bool(kinds & {"application/json", "application/*", "*/*"})


def _require_json(request: Request, *, with_body: bool) -> None:
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if not _accepts_json(request) or (with_body and content_type != "application/json"):
        raise PostmarkError(
            415, 409, "JSON required: set the Accept and Content-Type headers to application/json."
        )


async def _read_json(request: Request, *, limit: int) -> object:
    body = await request.body()
    if len(body) > limit:
        raise PostmarkError(413, 300, f"Payload too large: the limit is {limit} bytes.")
    try:
        return json.loads(body)
    except ValueError:
        raise PostmarkError(
            422, 402, "Invalid JSON: the request body could not be parsed."
        ) from None


def _accept_one(sandbox: Sandbox, data: object, *, test: bool, templated: bool) -> dict[str, Any]:
    """One message's send answer. A template message is rendered first and then takes the
    plain message's path, so it is validated, screened and captured exactly like one."""
    if not templated:
        return sandbox.accept(data, test=test)
    message, template = sandbox.store.templates.render_message(data)
    return sandbox.accept(message, test=test, template_alias=template)


def _send_batch(
    sandbox: Sandbox, data: object, *, test: bool, templated: bool = False
) -> list[dict[str, Any]]:
    if templated:  # {"Messages": [...]}
        if not isinstance(data, dict) or not isinstance(data.get("Messages"), list):
            raise PostmarkError(
                422, 403, "The request body must be a JSON object with a 'Messages' array."
            )
        data = data["Messages"]
    if not isinstance(data, list):
        raise PostmarkError(422, 403, "The request body must be a JSON array of messages.")
    sandbox.faults.stats.batch_sizes[len(data)] += 1
    if len(data) > MAX_BATCH:
        raise PostmarkError(
            422, 410, f"Too many batch messages: {len(data)}; at most {MAX_BATCH} per call."
        )
    answers: list[dict[str, Any]] = []
    for item in data:
        try:
            answers.append(_accept_one(sandbox, item, test=test, templated=templated))
        except PostmarkError as exc:
            answers.append(exc.body())
    return answers


async def _send(
    request: Request, sandbox: Sandbox, *, batch: bool, templated: bool = False
) -> Response:
    decision = sandbox.faults.decide()
    if decision.delay:
        await asyncio.sleep(decision.delay)
    if decision.error_status is not None:
        return JSONResponse(decision.error_body(), status_code=decision.error_status)
    if not decision.accept:  # the request is lost on its way: nothing is looked at
        await asyncio.sleep(decision.hold_answer)
        return JSONResponse(decision.error_body_lost(), status_code=504)
    answer: Any
    try:
        kind = _authorize(request, sandbox)
        _require_json(request, with_body=True)
        data = await _read_json(request, limit=MAX_BATCH_BYTES if batch else MAX_MESSAGE_BYTES)
        if batch:
            answer = _send_batch(sandbox, data, test=kind == "test", templated=templated)
        else:
            answer = _accept_one(sandbox, data, test=kind == "test", templated=templated)
        response: Response = JSONResponse(answer)
    except PostmarkError as exc:
        response = error_response(exc)
    if decision.hold_answer:
        await asyncio.sleep(decision.hold_answer)
    return _answer(sandbox, "send", response)


@router.post("/email")
async def send_email(request: Request, sandbox: SandboxDep) -> Response:
    """Send one message."""
    return await _send(request, sandbox, batch=False)


@router.post("/email/batch")
async def send_batch(request: Request, sandbox: SandboxDep) -> Response:
    """Send up to 500 messages; answers in request order, failures in place."""
    return await _send(request, sandbox, batch=True)


# postmarker posts to these with a trailing slash; Postmark's documentation names them without.
@router.post("/email/withTemplate")
@router.post("/email/withTemplate/", include_in_schema=False)
async def send_with_template(request: Request, sandbox: SandboxDep) -> Response:
    """Send one message rendered from a template (`TemplateAlias` or `TemplateId`, and a
    `TemplateModel`)."""
    return await _send(request, sandbox, batch=False, templated=True)


@router.post("/email/batchWithTemplates")
@router.post("/email/batchWithTemplates/", include_in_schema=False)
async def send_batch_with_templates(request: Request, sandbox: SandboxDep) -> Response:
    """Send up to 500 template messages (`{"Messages": [...]}`); answers in request order,
    failures in place."""
    return await _send(request, sandbox, batch=True, templated=True)


async def _template_call(
    request: Request,
    sandbox: Sandbox,
    work: Callable[[], Awaitable[Any]],
    *,
    with_body: bool = False,
) -> Response:
    """Authorise and check JSON as for sending, then answer with `work()`. Setting templates up
    is not the send path, so injected faults (which stand for Postmark failing a send) stay out
    of it."""
    try:
        _authorize(request, sandbox)
        _require_json(request, with_body=with_body)
        return JSONResponse(await work())
    except PostmarkError as exc:
        return error_response(exc)


@router.post("/templates")
async def create_template(request: Request, sandbox: SandboxDep) -> Response:
    """Create a template: `{Name, Alias?, Subject, HtmlBody?, TextBody?}`."""

    async def work() -> Any:
        data = await _read_json(request, limit=MAX_MESSAGE_BYTES)
        return sandbox.store.templates.create(data).summary_json()

    return await _template_call(request, sandbox, work, with_body=True)


@router.get("/templates")
async def list_templates(request: Request, sandbox: SandboxDep) -> Response:
    """The server's templates, `Count` at a time from `Offset`."""

    async def work() -> Any:
        params = {key.lower(): value for key, value in request.query_params.items()}
        try:
            count, offset = int(params["count"]), int(params.get("offset") or "0")
        except (KeyError, ValueError):
            raise PostmarkError(
                422, 700, "'Count' is a required integer; 'Offset' an integer."
            ) from None
        if not 1 <= count <= MAX_TEMPLATE_PAGE or offset < 0:
            raise PostmarkError(422, 700, f"'Count' must be 1-{MAX_TEMPLATE_PAGE}.")
        total, page = sandbox.store.templates.page(count, offset)
        return {"TotalCount": total, "Templates": [t.summary_json() for t in page]}

    return await _template_call(request, sandbox, work)


@router.get("/templates/{id_or_alias}")
async def get_template(id_or_alias: str, request: Request, sandbox: SandboxDep) -> Response:
    """One template by id or alias, with its Subject and bodies."""

    async def work() -> Any:
        return sandbox.store.templates.get(id_or_alias).json()

    return await _template_call(request, sandbox, work)


@router.put("/templates/{id_or_alias}")
async def edit_template(id_or_alias: str, request: Request, sandbox: SandboxDep) -> Response:
    """Change the fields given; the others stay as they were."""

    async def work() -> Any:
        data = await _read_json(request, limit=MAX_MESSAGE_BYTES)
        return sandbox.store.templates.update(id_or_alias, data).summary_json()

    return await _template_call(request, sandbox, work, with_body=True)


@router.delete("/templates/{id_or_alias}")
async def delete_template(id_or_alias: str, request: Request, sandbox: SandboxDep) -> Response:
    """Remove a template; messages already sent from it stay captured."""

    async def work() -> Any:
        removed = sandbox.store.templates.delete(id_or_alias)
        return {"ErrorCode": 0, "Message": f"Template {removed.template_id} removed."}

    return await _template_call(request, sandbox, work)


def _page(request: Request) -> tuple[int, int]:
    try:
        count = int(request.query_params["count"])
        offset = int(request.query_params["offset"])
    except (KeyError, ValueError):
        raise PostmarkError(
            422, 700, "Messages query exception: 'count' and 'offset' are required integers."
        ) from None
    if not 1 <= count <= MAX_PAGE or offset < 0 or count + offset > MAX_SEARCH_DEPTH:
        raise PostmarkError(
            422,
            700,
            f"Messages query exception: 'count' must be 1-{MAX_PAGE}, 'offset' at least 0, "
            f"and together at most {MAX_SEARCH_DEPTH}.",
        )
    return count, offset


@router.get("/messages/outbound")
async def search_outbound(request: Request, sandbox: SandboxDep) -> Response:
    """Outbound message search, with `metadata_<field>=<value>` filters, in one message
    stream: `messagestream`, or the default transactional stream, as Postmark's is."""
    try:
        _authorize(request, sandbox)
        _require_json(request, with_body=False)
        count, offset = _page(request)
    except PostmarkError as exc:
        return _answer(sandbox, "search", error_response(exc))
    params = request.query_params
    metadata = {
        key.removeprefix(_METADATA_PREFIX): value
        for key, value in params.items()
        if key.startswith(_METADATA_PREFIX) and len(key) > len(_METADATA_PREFIX)
    }
    status = params.get("status")
    found = sandbox.store.search(
        recipient=params.get("recipient") or None,
        sender=params.get("fromemail") or None,
        tag=params.get("tag") or None,
        subject=params.get("subject") or None,
        stream=params.get("messagestream") or DEFAULT_STREAM,
        metadata=metadata,
    )
    if status and status.lower() != "sent":
        found = []  # every captured message counts as sent
    now = time.monotonic()
    found = [message for message in found if message.searchable_at <= now]  # the index lags
    page = found[offset : offset + count]
    return _answer(
        sandbox,
        "search",
        JSONResponse(
            {"TotalCount": len(found), "Messages": [message.search_json() for message in page]}
        ),
    )


@router.get("/messages/outbound/{message_id}/details")
async def outbound_details(message_id: str, request: Request, sandbox: SandboxDep) -> Response:
    try:
        _authorize(request, sandbox)
        _require_json(request, with_body=False)
    except PostmarkError as exc:
        return error_response(exc)
    message = sandbox.store.get(message_id)
    if message is None:
        return error_response(PostmarkError(422, 701, "This message was not found."))
    return JSONResponse(message.details_json())


def _find_bounce(raw_id: str, sandbox: Sandbox) -> Bounce:
    # An id is ASCII digits that fit 64 bits ("²" is a digit to Python, not to int()).
    numeric = raw_id.isascii() and raw_id.isdigit() and len(raw_id) <= MAX_ID_DIGITS
    bounce = sandbox.store.bounce(int(raw_id)) if numeric else None
    if bounce is None:
        raise PostmarkError(422, 1001, "Bounce was not found.")
    return bounce


@router.get("/bounces/{bounce_id}")
async def get_bounce(bounce_id: str, request: Request, sandbox: SandboxDep) -> Response:
    try:
        _authorize(request, sandbox)
        _require_json(request, with_body=False)
        bounce = _find_bounce(bounce_id, sandbox)
    except PostmarkError as exc:
        return error_response(exc)
    return JSONResponse(bounce.as_json())


@router.put("/bounces/{bounce_id}/activate")
async def activate_bounce(bounce_id: str, request: Request, sandbox: SandboxDep) -> Response:
    """Reactivate the address a bounce made inactive."""
    try:
        _authorize(request, sandbox)
        _require_json(request, with_body=False)
        bounce = _find_bounce(bounce_id, sandbox)
        sandbox.activate(bounce)
    except PostmarkError as exc:
        return _answer(sandbox, "reactivate", error_response(exc))
    return _answer(
        sandbox, "reactivate", JSONResponse({"Message": "OK", "Bounce": bounce.as_json()})
    )
