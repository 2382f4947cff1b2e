"""The OpenAPI documents the api and the notifier serve at /openapi.json: one Problem schema
that every problem response refers to, the problem types each route answers with, stable
operation ids, the idempotency headers and the webhook bodies."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jsonschema_rs
import pytest
from fastapi import FastAPI
from fastapi.routing import APIRoute

from api.app import create_app as create_api
from notifier.app import create_app as create_notifier
from outbox_relay.app import create_app as create_relay
from postroom.problems import PROBLEM_MEDIA_TYPE, PROBLEM_REF, PROBLEM_TYPES, TYPE_PREFIX
from postroom.web import operation_id
from tests.support.settings import (
    make_api_settings,
    make_notifier_settings,
    make_relay_settings,
)

UNUSED_DB = "postgresql://unused@127.0.0.1:9/unused"
ROOT = Path(__file__).parents[2]
POSTMARK_FIXTURES = ROOT / "tests" / "fixtures" / "postmark"


def build(name: str) -> FastAPI:
    # Building an app does no I/O and serving /openapi.json needs no lifespan.
    if name == "api":
        return create_api(make_api_settings(UNUSED_DB))
    if name == "notifier":
        return create_notifier(
            make_notifier_settings(UNUSED_DB, "127.0.0.1:9", "http://x", "t"), consume=False
        )
    return create_relay(make_relay_settings(UNUSED_DB, "127.0.0.1:9"))


async def served(app: FastAPI) -> dict[str, Any]:
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://test"
    ) as client:
        answer = await client.get("/openapi.json")
    assert answer.status_code == 200
    document: dict[str, Any] = answer.json()
    return document


@pytest.fixture(params=["api", "notifier", "relay"])
async def document(request: pytest.FixtureRequest) -> dict[str, Any]:
    return await served(build(request.param))


def operations(document: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in document["paths"].items():
        for method, operation in item.items():
            yield path, method, operation


def walk(value: Any, where: str = "#") -> Iterator[tuple[str, Any]]:
    yield where, value
    if isinstance(value, dict):
        for key, item in value.items():
            yield from walk(item, f"{where}/{key}")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from walk(item, f"{where}/{index}")


def looks_like_a_problem(schema: Any) -> bool:
    return isinstance(schema, dict) and {"type", "title", "status"} <= set(
        schema.get("properties", {})
    )


async def test_problem_is_one_component_every_problem_response_refers_to(
    document: dict[str, Any],
) -> None:
    schemas = document["components"]["schemas"]
    assert [name for name, schema in schemas.items() if looks_like_a_problem(schema)] == ["Problem"]
    inlined = [
        where
        for where, value in walk(document)
        if looks_like_a_problem(value) and where != "#/components/schemas/Problem"
    ]
    assert inlined == []
    problem_answers = 0
    for path, method, operation in operations(document):
        for status, response in operation["responses"].items():
            content = response.get("content", {})
            if PROBLEM_MEDIA_TYPE in content:
                problem_answers += 1
                assert content[PROBLEM_MEDIA_TYPE]["schema"] == {"$ref": PROBLEM_REF}, (
                    path,
                    method,
                    status,
                )
    assert problem_answers > 0


async def test_each_problem_response_names_the_types_it_answers_with(
    document: dict[str, Any],
) -> None:
    for path, method, operation in operations(document):
        for status, response in operation["responses"].items():
            media = response.get("content", {}).get(PROBLEM_MEDIA_TYPE)
            if media is None:
                continue
            examples = media["examples"]
            assert examples, (path, method, status)
            for slug, example in examples.items():
                kind = PROBLEM_TYPES[slug]
                assert example["value"] == {
                    "type": kind.uri,
                    "title": kind.title,
                    "status": int(status),
                }
                assert kind.uri in response["description"]


# What any request to the process may be answered, whatever the route.
ANY_REQUEST = {"not-found", "method-not-allowed", "request-header-too-large", "internal-error"}


def answered(document: dict[str, Any]) -> set[str]:
    """The problem types the document's routes say they answer with."""
    return {
        slug
        for _, _, operation in operations(document)
        for response in operation["responses"].values()
        for slug in response.get("content", {}).get(PROBLEM_MEDIA_TYPE, {}).get("examples", {})
    }


async def test_the_problem_component_lists_the_types_its_process_answers(
    document: dict[str, Any],
) -> None:
    problem = document["components"]["schemas"]["Problem"]
    listed = problem["properties"]["type"]["examples"]
    slugs = {uri.removeprefix(TYPE_PREFIX) for uri in listed}
    assert answered(document) | ANY_REQUEST <= slugs
    # A body too large is answered by a middleware, on any route of a process that limits.
    assert slugs - answered(document) - ANY_REQUEST <= {"body-too-large"}
    assert listed == [kind.uri for kind in PROBLEM_TYPES.values() if kind.slug in slugs]
    for kind in PROBLEM_TYPES.values():
        described = f"`{kind.uri}` ({kind.status} {kind.title})" in problem["description"]
        assert described == (kind.slug in slugs)


@pytest.mark.parametrize(
    ("name", "own", "others"),
    [
        ("api", {"email-taken", "body-too-large"}, {"consumer-halted", "relay-not-ready"}),
        ("notifier", {"invalid-webhook", "body-too-large"}, {"email-taken", "relay-not-ready"}),
        ("relay", {"relay-not-ready"}, {"email-taken", "consumer-halted", "body-too-large"}),
    ],
)
async def test_each_process_lists_only_its_own_problem_types(
    name: str, own: set[str], others: set[str]
) -> None:
    problem = (await served(build(name)))["components"]["schemas"]["Problem"]
    slugs = {uri.removeprefix(TYPE_PREFIX) for uri in problem["properties"]["type"]["examples"]}
    assert own | ANY_REQUEST <= slugs
    assert not others & slugs
    if name == "relay":  # no route of its own but the operations routes
        assert slugs == ANY_REQUEST | {"relay-not-ready"}


async def test_every_route_that_takes_a_json_body_documents_the_415(
    document: dict[str, Any],
) -> None:
    taking = 0
    for path, method, operation in operations(document):
        content = operation.get("requestBody", {}).get("content", {})
        responses = operation["responses"]
        if "application/json" in content:
            taking += 1
            examples = responses["415"]["content"][PROBLEM_MEDIA_TYPE]["examples"]
            assert list(examples) == ["unsupported-media-type"], (path, method)
        else:
            assert "415" not in responses, (path, method)
    assert taking == len(JSON_BODIES[document["info"]["title"]])


def test_problem_types_are_named_in_one_place() -> None:
    """The handlers raise types from the registry; no type URI is spelt anywhere else."""
    spelt = [
        str(path.relative_to(ROOT))
        for package in ("postroom", "api", "outbox_relay", "notifier", "postroom_cli")
        for path in (ROOT / package).rglob("*.py")
        if TYPE_PREFIX in path.read_text()
    ]
    assert spelt == ["postroom/problems.py"]
    assert all(re.fullmatch(r"[a-z]+(-[a-z]+)*", slug) for slug in PROBLEM_TYPES)


JSON_BODIES = {
    "Postroom API": ["createUser", "updateUser", "verifyEmail"],
    "Postroom notifier": ["addSuppression", "receivePostmarkWebhook"],
    "Postroom outbox relay": [],
}


# Generated clients name their methods after these: renaming a route's function changes its
# id, which this list makes a deliberate act.
OPERATION_IDS = {
    "api": {
        ("/v1/users", "post"): "createUser",
        ("/v1/users/{user_id}", "get"): "getUser",
        ("/v1/users/{user_id}", "patch"): "updateUser",
        ("/v1/users/{user_id}", "delete"): "deleteUser",
        ("/v1/users/{user_id}/verification-emails", "post"): "requestVerificationEmail",
        ("/v1/email-verifications", "post"): "verifyEmail",
        ("/verify-email", "get"): "verifyEmailPage",
        ("/verify-email", "post"): "verifyEmailButton",
        ("/verify-email/resend", "post"): "resendVerificationButton",
    },
    "notifier": {
        ("/v1/notifications", "get"): "listNotifications",
        ("/v1/notifications/{notification_id}", "get"): "getNotification",
        ("/v1/suppressions", "get"): "listSuppressions",
        ("/v1/suppressions", "post"): "addSuppression",
        ("/v1/suppressions/{email}", "delete"): "liftSuppression",
        ("/webhooks/postmark", "post"): "receivePostmarkWebhook",
    },
    "relay": {},
}
OPERATIONS_ROUTES = {
    ("/healthz", "get"): "healthz",
    ("/readyz", "get"): "readyz",
    ("/metrics", "get"): "metrics",
}


@pytest.mark.parametrize("name", ["api", "notifier", "relay"])
async def test_operation_ids_are_the_route_functions_names_in_camel_case(name: str) -> None:
    document = await served(build(name))
    ids = {(path, method): op["operationId"] for path, method, op in operations(document)}

    assert ids == OPERATION_IDS[name] | OPERATIONS_ROUTES
    assert len(set(ids.values())) == len(ids)
    assert all(re.fullmatch(r"[a-z]+([A-Z][a-z0-9]*)*", op_id) for op_id in ids.values())


def test_an_operation_id_is_its_function_name_in_camel_case() -> None:
    async def list_things_by_owner() -> None: ...

    route = APIRoute("/things", list_things_by_owner)
    assert operation_id(route) == "listThingsByOwner"


async def test_the_idempotency_headers_are_documented() -> None:
    paths = (await served(build("api")))["paths"]
    for path, success in (("/v1/users", "201"), ("/v1/email-verifications", "200")):
        operation = paths[path]["post"]
        [key] = [p for p in operation["parameters"] if p["name"] == "Idempotency-Key"]
        assert key["in"] == "header"
        assert not key["required"]
        for status in (success, "410"):  # a replay about a user deleted since is a 410
            header = operation["responses"][status]["headers"]["Idempotent-Replayed"]
            assert header["schema"] == {"type": "string", "enum": ["true"]}
    assert "Idempotent-Replayed" not in str(paths["/v1/users/{user_id}"])


async def test_the_webhook_body_is_one_postmark_record_by_its_record_type() -> None:
    document = await served(build("notifier"))
    body = document["paths"]["/webhooks/postmark"]["post"]["requestBody"]
    assert body["required"] is True
    schema = body["content"]["application/json"]["schema"]
    mapping = schema["discriminator"]["mapping"]
    assert schema["discriminator"]["propertyName"] == "RecordType"
    assert set(mapping) >= {"Bounce", "SpamComplaint", "Delivery", "SubscriptionChange"}
    assert {ref["$ref"] for ref in schema["oneOf"]} == set(mapping.values())
    components = document["components"]["schemas"]
    for record_type, ref in mapping.items():
        record = components[ref.removeprefix("#/components/schemas/")]
        assert "RecordType" in record["required"]
        assert record["properties"]["RecordType"] != {}, record_type
    assert {"ID", "Email", "Type"} <= set(components["BounceRecord"]["required"])


@pytest.mark.parametrize(
    ("fixture", "record"),
    [
        ("bounce_hard", "BounceRecord"),
        ("spam_complaint", "BounceRecord"),
        ("delivery", "DeliveryRecord"),
        ("subscription_change", "SubscriptionChangeRecord"),
        (None, "OtherRecord"),
    ],
)
async def test_postmarks_own_bodies_match_exactly_one_documented_record(
    fixture: str | None, record: str
) -> None:
    document = await served(build("notifier"))
    body_schema = document["paths"]["/webhooks/postmark"]["post"]["requestBody"]["content"][
        "application/json"
    ]["schema"]
    # The $refs point into the document's components: validate with them at hand.
    schema = {**body_schema, "components": document["components"]}
    body = (
        json.loads((POSTMARK_FIXTURES / f"{fixture}.json").read_text())
        if fixture
        else {"RecordType": "Open", "MessageID": "x"}
    )

    jsonschema_rs.validate(schema, body)
    matching = [
        branch["$ref"]
        for branch in body_schema["oneOf"]
        if jsonschema_rs.is_valid({**branch, "components": document["components"]}, body)
    ]
    assert matching == [f"#/components/schemas/{record}"]


async def test_every_reference_resolves(document: dict[str, Any]) -> None:
    for where, value in walk(document):
        if isinstance(value, dict) and isinstance(value.get("$ref"), str):
            target: Any = document
            for part in value["$ref"].removeprefix("#/").split("/"):
                target = target[part]
            assert isinstance(target, dict), where


@pytest.mark.parametrize(
    ("method", "url", "auth", "status"),
    [
        ("GET", "/v1/users/00000000-0000-4000-8000-000000000000", True, "404"),
        ("GET", "/v1/users/not-a-uuid", True, "422"),
        ("DELETE", "/v1/users/00000000-0000-4000-8000-000000000000", False, "401"),
        ("POST", "/v1/email-verifications", False, "400"),
    ],
)
async def test_answers_are_of_the_types_their_route_documents(
    app: FastAPI, client: httpx.AsyncClient, method: str, url: str, auth: bool, status: str
) -> None:
    headers = None if auth else {"Authorization": ""}
    body = {"token": "not-a-token"} if method == "POST" else None
    answer = await client.request(method, url, json=body, headers=headers)

    assert str(answer.status_code) == status
    paths = (await served(app))["paths"]
    template = "/v1/users/{user_id}" if url.startswith("/v1/users/") else url
    documented = paths[template][method.lower()]["responses"][status]
    examples = documented["content"][PROBLEM_MEDIA_TYPE]["examples"]
    assert answer.json()["type"] in [example["value"]["type"] for example in examples.values()]
