"""The published event catalogue stays in step with the code that emits the events."""

import json
from pathlib import Path

from postroom.catalog import asyncapi, publish, schemas
from postroom.events import ALL_EVENTS

DOCS = Path(__file__).resolve().parents[2] / "docs" / "events"


def test_the_committed_catalogue_is_what_the_code_generates(tmp_path: Path) -> None:
    written = publish(tmp_path)
    for path in written:
        committed = DOCS / path.name
        assert committed.exists(), f"run `postroom events publish` ({path.name} missing)"
        assert committed.read_text() == path.read_text(), (
            f"{path.name} is stale: run `postroom events publish`"
        )
    assert {p.name for p in DOCS.glob("*.json")} == {p.name for p in written}


def test_every_event_type_is_in_the_asyncapi_document() -> None:
    document = asyncapi()
    names = {m["name"] for m in document["components"]["messages"].values()}
    assert names == {model.event_type for model in ALL_EVENTS} == set(schemas())
    addresses = {c["address"] for c in document["channels"].values()}
    assert addresses == {"postroom.user", "postroom.email"}
    # Consumers must accept fields added later.
    assert all("additionalProperties" not in s for s in schemas().values())
    # Plain JSON, nothing exotic: what a consumer parses from the published text is the
    # document itself (no tuples, no non-string keys, no NaN).
    assert json.loads(json.dumps(document, allow_nan=False)) == document
