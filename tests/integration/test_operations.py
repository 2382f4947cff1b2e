"""Health, readiness, metrics and the published API description."""

import httpx
from fastapi import FastAPI


async def test_health_and_readiness(client: httpx.AsyncClient) -> None:
    assert (await client.get("/healthz")).json() == {"status": "ok"}
    ready = await client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json() == {"status": "ready"}


async def test_metrics_count_requests_by_route_template(client: httpx.AsyncClient) -> None:
    created = await client.post("/v1/users", json={"email": "m@example.com", "name": "M"})
    await client.get(f"/v1/users/{created.json()['id']}")
    text = (await client.get("/metrics")).text
    assert 'postroom_http_requests_total{method="POST",route="/v1/users",status="201"} 1.0' in text
    assert 'route="/v1/users/{user_id}",status="200"} 1.0' in text
    assert created.json()["id"] not in text  # ids never become label values


async def test_openapi_lists_every_answer_a_route_gives(app: FastAPI) -> None:
    paths = app.openapi()["paths"]
    expected = {
        # 410: a replayed Idempotency-Key whose user was deleted since.
        # 415: a body that is not JSON.
        ("/v1/users", "post"): {"201", "400", "401", "409", "410", "413", "415", "422", "503"},
        ("/v1/users/{user_id}", "get"): {"200", "401", "404", "422", "503"},
        ("/v1/users/{user_id}", "patch"): {
            "200",
            "400",
            "401",
            "404",
            "409",
            "413",
            "415",
            "422",
            "503",
        },
        ("/v1/users/{user_id}", "delete"): {"204", "401", "404", "422", "503"},
        ("/v1/email-verifications", "post"): {"200", "400", "410", "413", "415", "422", "503"},
        ("/verify-email", "get"): {"200", "400", "410", "503"},
        ("/verify-email", "post"): {"200", "400", "410", "413", "503"},
        ("/verify-email/resend", "post"): {"202", "400", "409", "410", "413", "429", "503"},
        ("/v1/users/{user_id}/verification-emails", "post"): {
            "202",
            "401",
            "404",
            "409",
            "410",
            "422",
            "429",
            "503",
        },
    }
    for (path, method), statuses in expected.items():
        assert set(paths[path][method]["responses"]) == statuses, (path, method)
    problem = paths["/v1/users"]["post"]["responses"]["409"]["content"]
    assert list(problem) == ["application/problem+json"]


async def test_a_wrong_method_names_every_allowed_one(client: httpx.AsyncClient) -> None:
    answer = await client.put("/v1/users/00000000-0000-4000-8000-000000000000")
    assert answer.status_code == 405
    assert answer.headers["allow"] == "DELETE, GET, PATCH"
    assert answer.json()["type"] == "urn:postroom:problem:method-not-allowed"
