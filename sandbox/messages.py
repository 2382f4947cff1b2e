"""One email as Postmark receives it: validated like Postmark does, then kept as a message."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import getaddresses
from functools import lru_cache
from typing import Any

from email_validator import EmailNotValidError, validate_email

MAX_RECIPIENTS = 50
MAX_METADATA_FIELDS = 10
MAX_METADATA_NAME = 20
MAX_METADATA_VALUE = 80
DEFAULT_STREAM = "outbound"
BOUNCE_TYPE_HEADER = "x-pm-bounce-type"


class PostmarkError(Exception):
    """An answer Postmark gives instead of accepting a message: HTTP status, ErrorCode, text."""

    def __init__(self, status: int, code: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message

    def body(self) -> dict[str, Any]:
        return {"ErrorCode": self.code, "Message": self.message}


def invalid(message: str) -> PostmarkError:
    """Postmark's catch-all for a message it will not take (HTTP 422, ErrorCode 300)."""
    return PostmarkError(422, 300, message)


@dataclass(frozen=True)
class Address:
    name: str
    email: str

    @property
    def key(self) -> str:
        """The form suppressions and searches compare: the address, case-folded."""
        return self.email.lower()

    def as_json(self) -> dict[str, str | None]:
        return {"Email": self.email, "Name": self.name or None}


@dataclass
class Message:
    """A message the sandbox accepted."""

    message_id: str
    received_at: datetime
    sender: str
    to: str
    cc: str
    bcc: str
    to_addresses: list[Address]
    cc_addresses: list[Address]
    bcc_addresses: list[Address]
    subject: str
    html_body: str | None
    text_body: str | None
    tag: str | None
    metadata: dict[str, str]
    headers: list[dict[str, str]]
    message_stream: str
    reply_to: str | None
    track_opens: bool | None
    track_links: str | None
    attachments: list[dict[str, Any]] = field(default_factory=list)
    bounce_type: str | None = None
    # The Postmark template it was rendered from (`/email/withTemplate`): its alias, or its id
    # when it has none; None for a plain message, whatever fields that carried.
    template_alias: str | None = None
    # When (time.monotonic) Postmark's search index shows it: later than acceptance when the
    # `search_delay_ms` fault is on.
    searchable_at: float = 0.0

    @property
    def recipients(self) -> list[Address]:
        return [*self.to_addresses, *self.cc_addresses, *self.bcc_addresses]

    def header(self, name: str) -> str | None:
        wanted = name.lower()
        for header in self.headers:
            if header["Name"].lower() == wanted:
                return header["Value"]
        return None

    def capture_json(self) -> dict[str, Any]:
        """The capture API's view: everything that was sent."""
        return {
            "MessageID": self.message_id,
            "ReceivedAt": self.received_at.isoformat(),
            "From": self.sender,
            "To": self.to,
            "Cc": self.cc,
            "Bcc": self.bcc,
            "Recipients": [address.email for address in self.recipients],
            "ReplyTo": self.reply_to,
            "Subject": self.subject,
            "HtmlBody": self.html_body,
            "TextBody": self.text_body,
            "Tag": self.tag,
            "Metadata": self.metadata,
            "Headers": self.headers,
            "MessageStream": self.message_stream,
            "TrackOpens": self.track_opens,
            "TrackLinks": self.track_links,
            "Attachments": self.attachments,
            "TemplateAlias": self.template_alias,
        }

    def raw_headers(self) -> list[tuple[str, str]]:
        """The message's fields as Postmark received them, one (name, value) each, in Postmark's
        names (fields it was sent without are left out), then its own `Headers` as given."""
        fields: list[tuple[str, str | None]] = [
            ("MessageID", self.message_id),
            ("ReceivedAt", self.received_at.isoformat()),
            ("From", self.sender),
            ("To", self.to),
            ("Cc", self.cc),
            ("Bcc", self.bcc),
            ("ReplyTo", self.reply_to),
            ("Subject", self.subject),
            ("Tag", self.tag),
            ("MessageStream", self.message_stream),
            ("TemplateAlias", self.template_alias),
            ("TrackOpens", None if self.track_opens is None else str(self.track_opens).lower()),
            ("TrackLinks", self.track_links),
        ]
        lines = [(name, value) for name, value in fields if value]
        lines += [(f"Metadata[{name}]", value) for name, value in self.metadata.items()]
        lines += [
            ("Attachment", f"{attachment['Name']} ({attachment['ContentType'] or 'no type'})")
            for attachment in self.attachments
        ]
        lines += [(header["Name"], header["Value"]) for header in self.headers]
        return [(name, _one_line(value)) for name, value in lines]

    def raw_json(self) -> dict[str, Any]:
        """The raw view: every header line, the text part and the HTML part's source."""
        return {
            "MessageID": self.message_id,
            "Headers": [{"Name": name, "Value": value} for name, value in self.raw_headers()],
            "TextBody": self.text_body,
            "HtmlBody": self.html_body,
        }

    def search_json(self) -> dict[str, Any]:
        """One entry of `GET /messages/outbound`, in Postmark's shape."""
        return {
            "MessageID": self.message_id,
            "MessageStream": self.message_stream,
            "Tag": self.tag,
            "To": [address.as_json() for address in self.to_addresses],
            "Cc": [address.as_json() for address in self.cc_addresses],
            "Bcc": [address.as_json() for address in self.bcc_addresses],
            "Recipients": [address.email for address in self.recipients],
            "ReceivedAt": self.received_at.isoformat(),
            "From": self.sender,
            "Subject": self.subject,
            "Attachments": [attachment["Name"] for attachment in self.attachments],
            "Status": "Sent",
            "TrackOpens": bool(self.track_opens),
            "TrackLinks": self.track_links or "None",
            "Metadata": self.metadata,
            "Sandboxed": False,
        }

    def details_json(self) -> dict[str, Any]:
        """`GET /messages/outbound/{id}/details`: the search entry plus bodies and events."""
        return {
            **self.search_json(),
            "TextBody": self.text_body or "",
            "HtmlBody": self.html_body or "",
            "Body": "",
            "MessageEvents": [
                {
                    "Recipient": address.email,
                    "Type": "Delivered",
                    "ReceivedAt": self.received_at.isoformat(),
                    "Details": {"DeliveryMessage": "Captured by the sandbox"},
                }
                for address in self.recipients
            ],
        }

    def send_answer(self, *, test: bool = False) -> dict[str, Any]:
        return {
            "To": self.to,
            "SubmittedAt": self.received_at.isoformat(),
            "MessageID": self.message_id,
            "ErrorCode": 0,
            "Message": "Test job accepted" if test else "OK",
        }


def _one_line(value: str) -> str:
    """A header value on one line, so a line break inside it cannot pass for another header."""
    return value.replace("\r", "\\r").replace("\n", "\\n")


@lru_cache(maxsize=65_536)
def _is_valid_address(email: str) -> bool:
    try:
        # Syntax only, like Postmark; `.test` (reserved for testing) is fine for a sandbox.
        validate_email(email, check_deliverability=False, test_environment=True)
    except EmailNotValidError:
        return False
    return True


def _optional_str(data: dict[str, Any], key: str) -> str | None:
    value = data.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise invalid(f"The '{key}' field must be a string.")
    return value


def _addresses(data: dict[str, Any], key: str) -> tuple[str, list[Address]]:
    raw = _optional_str(data, key) or ""
    if not raw.strip():
        return "", []
    parsed: list[Address] = []
    for name, email in getaddresses([raw]):
        if not email or not _is_valid_address(email):
            raise invalid(f"Invalid '{key}' address: '{email or raw.strip()}'.")
        parsed.append(Address(name=name, email=email))
    return raw, parsed


def _metadata(data: dict[str, Any]) -> dict[str, str]:
    value = data.get("Metadata")
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise invalid("Invalid metadata content. Metadata must be an object of strings.")
    if len(value) > MAX_METADATA_FIELDS:
        raise invalid(
            f"Invalid metadata content. At most {MAX_METADATA_FIELDS} fields are allowed."
        )
    seen: set[str] = set()
    for name, item in value.items():
        if not name or len(name) > MAX_METADATA_NAME:
            raise invalid(
                "Invalid metadata content. Field names are limited to "
                f"{MAX_METADATA_NAME} characters: '{name}'."
            )
        if name.lower() in seen:
            raise invalid(f"Invalid metadata content. Duplicate field name: '{name}'.")
        seen.add(name.lower())
        if not isinstance(item, str):
            raise invalid(f"Invalid metadata content. The value of '{name}' must be a string.")
        if len(item) > MAX_METADATA_VALUE:
            raise invalid(
                "Invalid metadata content. Values are limited to "
                f"{MAX_METADATA_VALUE} characters: '{name}'."
            )
    return dict(value)


def _headers(data: dict[str, Any]) -> list[dict[str, str]]:
    value = data.get("Headers")
    if value is None:
        return []
    if not isinstance(value, list):
        raise invalid("The 'Headers' field must be a list of {Name, Value} objects.")
    headers: list[dict[str, str]] = []
    for item in value:
        if (
            not isinstance(item, dict)
            or not isinstance(item.get("Name"), str)
            or not item["Name"]
            or not isinstance(item.get("Value"), str)
        ):
            raise invalid("Each header must be an object with a 'Name' and a string 'Value'.")
        headers.append({"Name": item["Name"], "Value": item["Value"]})
    return headers


def _attachments(data: dict[str, Any]) -> list[dict[str, Any]]:
    value = data.get("Attachments")
    if value is None:
        return []
    if not isinstance(value, list):
        raise invalid("The 'Attachments' field must be a list.")
    kept: list[dict[str, Any]] = []
    for item in value:
        if not isinstance(item, dict) or not isinstance(item.get("Name"), str):
            raise invalid("Each attachment must be an object with a 'Name'.")
        content = item.get("Content")
        kept.append(
            {
                "Name": item["Name"],
                "ContentType": item.get("ContentType"),
                "ContentLength": len(content) if isinstance(content, str) else 0,
            }
        )
    return kept


def parse_message(data: object, *, known_bounce_types: frozenset[str]) -> Message:
    """Validate one message as Postmark does; raise `PostmarkError` when it would refuse it."""
    if not isinstance(data, dict):
        raise PostmarkError(422, 403, "The request body must be a JSON object (one message).")
    sender_raw = _optional_str(data, "From") or ""
    senders = getaddresses([sender_raw]) if sender_raw.strip() else []
    if len(senders) != 1 or not senders[0][1] or not _is_valid_address(senders[0][1]):
        raise invalid(f"Invalid 'From' address: '{sender_raw}'.")
    to, to_addresses = _addresses(data, "To")
    cc, cc_addresses = _addresses(data, "Cc")
    bcc, bcc_addresses = _addresses(data, "Bcc")
    if not to_addresses:
        raise invalid("Zero recipients specified: the 'To' field is required.")
    if len(to_addresses) + len(cc_addresses) + len(bcc_addresses) > MAX_RECIPIENTS:
        raise invalid(f"Too many recipients: at most {MAX_RECIPIENTS} across 'To', 'Cc' and 'Bcc'.")
    html_body = _optional_str(data, "HtmlBody")
    text_body = _optional_str(data, "TextBody")
    if not html_body and not text_body:
        raise invalid("Provide either email TextBody or HtmlBody or both.")
    headers = _headers(data)
    track_opens = data.get("TrackOpens")
    if track_opens is not None and not isinstance(track_opens, bool):
        raise invalid("The 'TrackOpens' field must be true or false.")
    message = Message(
        message_id=str(uuid.uuid4()),
        received_at=datetime.now(UTC),
        sender=sender_raw,
        to=to,
        cc=cc,
        bcc=bcc,
        to_addresses=to_addresses,
        cc_addresses=cc_addresses,
        bcc_addresses=bcc_addresses,
        subject=_optional_str(data, "Subject") or "",
        html_body=html_body,
        text_body=text_body,
        tag=_optional_str(data, "Tag") or None,
        metadata=_metadata(data),
        headers=headers,
        message_stream=_optional_str(data, "MessageStream") or DEFAULT_STREAM,
        reply_to=_optional_str(data, "ReplyTo"),
        track_opens=track_opens,
        track_links=_optional_str(data, "TrackLinks"),
        attachments=_attachments(data),
    )
    requested = message.header(BOUNCE_TYPE_HEADER)
    if requested is not None:
        matches = [name for name in known_bounce_types if name.lower() == requested.lower()]
        if not matches:
            raise invalid(f"Unknown X-PM-Bounce-Type: '{requested}'.")
        message.bounce_type = matches[0]
    return message
