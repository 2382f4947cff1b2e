"""The published event catalogue: a JSON Schema for each event type's data and an AsyncAPI 3
document for the topics, both generated from the event models in `postroom.events`, so other
teams code against exactly what the services emit (`postroom events schema | asyncapi`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from postroom.events import ALL_EVENTS, EventData

SCHEMA_BASE = "urn:postroom:event:"

_CE_HEADERS: dict[str, Any] = {
    "type": "object",
    "description": "CloudEvents 1.0 in Kafka binary mode.",
    "required": [
        "ce_specversion",
        "ce_id",
        "ce_source",
        "ce_type",
        "ce_time",
        "ce_subject",
        "content-type",
    ],
    "properties": {
        "ce_specversion": {"const": "1.0"},
        "ce_id": {
            "type": "string",
            "format": "uuid",
            "description": "The event id: stable across re-sends; drop repeats by it.",
        },
        "ce_source": {"type": "string", "examples": ["/postroom/api", "/postroom/notifier"]},
        "ce_type": {"type": "string"},
        "ce_time": {"type": "string", "format": "date-time"},
        "ce_subject": {"type": "string", "description": "The aggregate id (the record key)."},
        "content-type": {"const": "application/json"},
        "traceparent": {"type": "string", "description": "W3C trace context, when traced."},
    },
}


def schema_of(model: type[EventData]) -> dict[str, Any]:
    """The JSON Schema (2020-12) of one event type's data."""
    schema = model.model_json_schema(mode="serialization")
    # Consumers must accept fields added later, so the published schema does not forbid them.
    schema.pop("additionalProperties", None)
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": f"{SCHEMA_BASE}{model.event_type}",
        "title": model.event_type,
        **{key: value for key, value in schema.items() if key != "title"},
    }


def schemas() -> dict[str, dict[str, Any]]:
    return {model.event_type: schema_of(model) for model in ALL_EVENTS}


def asyncapi(prefix: str = "postroom") -> dict[str, Any]:
    """An AsyncAPI 3.0 document of the topics `<prefix>.user` and `<prefix>.email`."""
    messages: dict[str, Any] = {}
    channels: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    for aggregate in ("user", "email"):
        models = [m for m in ALL_EVENTS if m.aggregate_type == aggregate]
        channel = f"{aggregate}Events"
        channel_messages = {}
        for model in models:
            name = model.event_type.replace(".", "_")
            messages[name] = {
                "name": model.event_type,
                "title": model.event_type,
                "summary": (model.__doc__ or model.event_type).strip().splitlines()[0],
                "contentType": "application/json",
                "headers": {"$ref": "#/components/schemas/CloudEventHeaders"},
                "payload": schema_of(model),
                "bindings": {
                    "kafka": {
                        "key": {
                            "type": "string",
                            "description": "user id"
                            if aggregate == "user"
                            else "the recipient's address key (postroom/addresses.py)",
                        }
                    }
                },
            }
            channel_messages[name] = {"$ref": f"#/components/messages/{name}"}
        channels[channel] = {
            "address": f"{prefix}.{aggregate}",
            "description": "Ordered per key; at-least-once: drop repeats by ce_id.",
            "messages": channel_messages,
        }
        operations[f"receive{aggregate.title()}Events"] = {
            "action": "receive",
            "channel": {"$ref": f"#/channels/{channel}"},
        }
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "Postroom events",
            "version": "1.0.0",
            "description": "Facts about users and their emails, published through the outbox.",
        },
        "defaultContentType": "application/json",
        "channels": channels,
        "operations": operations,
        "components": {"messages": messages, "schemas": {"CloudEventHeaders": _CE_HEADERS}},
    }


def publish(directory: Path) -> list[Path]:
    """Write `<type>.json` for every event type and `asyncapi.json` into `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for event_type, schema in schemas().items():
        path = directory / f"{event_type}.json"
        path.write_text(json.dumps(schema, indent=2, sort_keys=True) + "\n")
        written.append(path)
    path = directory / "asyncapi.json"
    path.write_text(json.dumps(asyncapi(), indent=2) + "\n")
    written.append(path)
    return written
