"""Operators page through notifications and suppressions with cursors (real PostgreSQL, the
notifier's HTTP app): every row exactly once, newest first, whatever is inserted meanwhile."""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx
import pytest

from postroom import cursors
from postroom.addresses import address_key
from tests.support.settings import make_notifier_settings
from tests.support.stack import operator_api

T0 = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)


@pytest.fixture
async def notifier(database_url: str) -> AsyncIterator[httpx.AsyncClient]:
    settings = make_notifier_settings(database_url, "127.0.0.1:9", "http://127.0.0.1:9", "t-list")
    async with operator_api(settings) as client:
        yield client


async def add_notifications(
    db: asyncpg.Connection,
    count: int,
    *,
    recipient: str = "ada@example.com",
    status: str = "sent",
    start: datetime = T0,
) -> None:
    """`count` notifications, three to a creation time (one event's emails share it)."""
    await db.executemany(
        """
        INSERT INTO notifications (id, event_id, event_type, template, recipient,
                                   recipient_key, status, created_at)
        VALUES ($1, $2, 'user.registered', 'welcome', $3, $6, $4, $5)
        """,
        [
            (
                uuid.uuid4(),
                uuid.uuid4(),
                recipient,
                status,
                start + timedelta(seconds=n // 3),
                address_key(recipient),
            )
            for n in range(count)
        ],
    )


NOTIFICATIONS = "SELECT id::text FROM notifications ORDER BY created_at DESC, id DESC"
SUPPRESSIONS = "SELECT email FROM suppressions ORDER BY created_at DESC, email DESC"


async def keys(db: asyncpg.Connection, query: str, *args: Any) -> list[str]:
    return [row[0] for row in await db.fetch(query, *args)]


async def every_page(
    client: httpx.AsyncClient, path: str, params: dict[str, Any]
) -> list[list[dict[str, Any]]]:
    pages, cursor = [], None
    while True:
        answer = await client.get(path, params={**params, **({"cursor": cursor} if cursor else {})})
        assert answer.status_code == 200, answer.text
        body = answer.json()
        pages.append(body["items"])
        cursor = body["next_cursor"]
        if cursor is None:
            return pages
        assert len(pages) < 100, "the cursor does not move"


async def test_paging_through_notifications_yields_each_once_newest_first(
    notifier: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    await add_notifications(db, 23)

    pages = await every_page(notifier, "/v1/notifications", {"limit": 5})

    assert [len(page) for page in pages] == [5, 5, 5, 5, 3]
    ids = [item["id"] for page in pages for item in page]
    assert ids == await keys(db, NOTIFICATIONS)


async def test_a_full_last_page_says_it_is_the_last(
    notifier: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    await add_notifications(db, 10)

    pages = await every_page(notifier, "/v1/notifications", {"limit": 5})

    assert [len(page) for page in pages] == [5, 5]


async def test_an_empty_list_is_one_last_page(notifier: httpx.AsyncClient) -> None:
    for path in ("/v1/notifications", "/v1/suppressions"):
        assert (await notifier.get(path)).json() == {"items": [], "next_cursor": None}


async def test_rows_inserted_between_pages_make_no_page_repeat_or_skip_a_row(
    notifier: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    await add_notifications(db, 12)
    before = await keys(db, NOTIFICATIONS)
    first = (await notifier.get("/v1/notifications", params={"limit": 5})).json()

    # Newer rows, and rows at the very time the first page ended on (where the id decides).
    await add_notifications(db, 4, start=T0 + timedelta(hours=1))
    newer = set(await keys(db, NOTIFICATIONS)) - set(before)
    await add_notifications(db, 3, start=datetime.fromisoformat(first["items"][-1]["created_at"]))
    rest = await every_page(
        notifier, "/v1/notifications", {"limit": 5, "cursor": first["next_cursor"]}
    )

    seen = [item["id"] for item in first["items"]] + [item["id"] for page in rest for item in page]
    assert len(seen) == len(set(seen))
    assert [id_ for id_ in seen if id_ in before] == before
    assert not newer & set(seen)  # newer than the first page: the next list's first page
    now = await keys(db, NOTIFICATIONS)
    assert seen == [id_ for id_ in now if id_ in seen]  # the rest in the one order


async def test_filtered_pages_keep_their_filter(
    notifier: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    await add_notifications(db, 7, recipient="Ada@Example.com")
    await add_notifications(db, 7, recipient="bob@example.com")
    await add_notifications(db, 4, recipient="ada@example.com", status="failed")

    pages = await every_page(
        notifier, "/v1/notifications", {"email": "ADA@example.com", "status": "sent", "limit": 3}
    )

    items = [item for page in pages for item in page]
    assert {(item["recipient"], item["status"]) for item in items} == {("Ada@Example.com", "sent")}
    assert [item["id"] for item in items] == await keys(
        db,
        "SELECT id::text FROM notifications WHERE recipient = $1 AND status = 'sent' "
        "ORDER BY created_at DESC, id DESC",
        "Ada@Example.com",
    )


def assert_invalid_cursor(answer: httpx.Response) -> None:
    assert answer.status_code == 422, answer.text
    assert answer.headers["content-type"] == "application/problem+json"
    assert answer.json()["type"] == "urn:postroom:problem:invalid-cursor"


async def test_a_cursor_works_only_with_the_filters_it_was_made_with(
    notifier: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    await add_notifications(db, 6)
    first = await notifier.get("/v1/notifications", params={"email": "ada@example.com", "limit": 2})
    cursor = first.json()["next_cursor"]

    # The same filter in another letter case is the same filter; the limit may change.
    same = await notifier.get(
        "/v1/notifications", params={"email": "ADA@example.com", "limit": 3, "cursor": cursor}
    )
    assert same.status_code == 200
    assert len(same.json()["items"]) == 3

    for params in (
        {},
        {"email": "bob@example.com"},
        {"email": "ada@example.com", "status": "sent"},
        {"email": "ada@example.com", "user_id": str(uuid.uuid4())},
    ):
        assert_invalid_cursor(
            await notifier.get("/v1/notifications", params={**params, "cursor": cursor})
        )
    assert_invalid_cursor(await notifier.get("/v1/suppressions", params={"cursor": cursor}))


@pytest.mark.parametrize(
    "cursor",
    [
        "",
        "garbage",
        "eyJ",
        "W10",  # []
        cursors.encode("notifications", {}, created_at=T0, key="not-a-uuid"),
        cursors.encode("notifications", {}, created_at=T0, key="a\x00b"),
        cursors.encode("notifications", {}, created_at=T0.replace(tzinfo=None), key="k"),
        "W" * cursors.MAX_LENGTH + "x",
    ],
    ids=["empty", "garbage", "truncated", "empty-list", "bad-uuid", "nul", "naive", "too-long"],
)
async def test_a_bad_cursor_is_a_422_problem(
    notifier: httpx.AsyncClient, db: asyncpg.Connection, cursor: str
) -> None:
    await add_notifications(db, 3)
    answer = await notifier.get("/v1/notifications", params={"cursor": cursor})

    assert answer.status_code == 422, answer.text
    assert answer.headers["content-type"] == "application/problem+json"
    assert answer.json()["type"] in {
        "urn:postroom:problem:invalid-cursor",
        "urn:postroom:problem:validation-error",  # longer than any cursor
    }


async def test_a_tampered_cursor_is_refused(
    notifier: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    await add_notifications(db, 6)
    cursor = (await notifier.get("/v1/notifications", params={"limit": 2})).json()["next_cursor"]
    raw = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    raw[0] = "2026-11-30T11:00:00+00:00"  # an earlier position, the digest kept
    tampered = base64.urlsafe_b64encode(json.dumps(raw).encode()).decode().rstrip("=")

    assert_invalid_cursor(await notifier.get("/v1/notifications", params={"cursor": tampered}))


async def test_paging_through_suppressions_yields_each_once_newest_first(
    notifier: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    # Eleven at the same instant (one transaction), then four later: ties go by address.
    async with db.transaction():
        for n in range(11):
            await db.execute(
                "INSERT INTO suppressions (email, reason, origin) VALUES ($1, 'HardBounce', "
                "'Postmark')",
                f"user{n:02}@example.com",
            )
    for n in range(4):
        await db.execute(
            "INSERT INTO suppressions (email, reason, origin, created_at) VALUES ($1, "
            "'ManualSuppression', 'Operator', now() + make_interval(secs => $2))",
            f"later{n}@example.com",
            n + 1,
        )

    pages = await every_page(notifier, "/v1/suppressions", {"limit": 4})

    assert [len(page) for page in pages] == [4, 4, 4, 3]
    emails = [item["email"] for page in pages for item in page]
    assert emails == await keys(db, SUPPRESSIONS)
    assert emails[:4] == [f"later{n}@example.com" for n in (3, 2, 1, 0)]


PAGE_QUERIES = {
    "notifications": (
        "ix_notifications_created_at_id",
        "SELECT * FROM notifications ORDER BY created_at DESC, id DESC LIMIT 101",
    ),
    "notifications-after": (
        "ix_notifications_created_at_id",
        "SELECT * FROM notifications WHERE (created_at, id) < (now(), gen_random_uuid()) "
        "ORDER BY created_at DESC, id DESC LIMIT 101",
    ),
    "suppressions": (
        "ix_suppressions_created_at_email",
        "SELECT * FROM suppressions ORDER BY created_at DESC, email DESC LIMIT 101",
    ),
    "suppressions-after": (
        "ix_suppressions_created_at_email",
        "SELECT * FROM suppressions WHERE (created_at, email) < (now(), 'x') "
        "ORDER BY created_at DESC, email DESC LIMIT 101",
    ),
}


@pytest.mark.parametrize("page", PAGE_QUERIES)
async def test_an_index_serves_each_page_without_a_sort(db: asyncpg.Connection, page: str) -> None:
    index, query = PAGE_QUERIES[page]
    # Told to avoid sorting and full scans, the planner still finds a plan only if an index
    # gives the rows in the page's order.
    await db.execute("SET enable_sort = off")
    await db.execute("SET enable_seqscan = off")
    plan = "\n".join(row[0] for row in await db.fetch("EXPLAIN " + query))

    assert index in plan
    assert "Sort" not in plan
