"""Simulated bounces and spam complaints, shaped like Postmark's webhook bodies.

A message to `<type>@bounce-testing.postmarkapp.com`, or one with the header
`X-PM-Bounce-Type: <Type>`, bounces with that type. The bounce is recorded as soon as the
message is accepted, so whether its address is inactive never depends on webhook timing.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sandbox.messages import Address, Message

BOUNCE_TESTING_DOMAIN = "bounce-testing.postmarkapp.com"
SERVER_ID = 1


@dataclass(frozen=True)
class BounceType:
    name: str
    code: int
    title: str
    description: str
    inactive: bool = False
    can_activate: bool = True


_TYPES = (
    BounceType(
        "HardBounce",
        1,
        "Hard bounce",
        "The server was unable to deliver your message (ex: unknown user, mailbox not found).",
        inactive=True,
    ),
    BounceType("Transient", 2, "Message delayed", "The server could not temporarily deliver."),
    BounceType("Unsubscribe", 16, "Unsubscribe request", "The recipient asked to unsubscribe."),
    BounceType("Subscribe", 32, "Subscribe request", "The recipient asked to subscribe."),
    BounceType("AutoResponder", 64, "Auto responder", "An automatic reply (out of office)."),
    BounceType("AddressChange", 128, "Address change", "The recipient moved to a new address."),
    BounceType("DnsError", 256, "DNS error", "A temporary DNS error on the receiving side."),
    BounceType("SpamNotification", 512, "Spam notification", "Rejected as spam by a filter."),
    BounceType("OpenRelayTest", 1024, "Open relay test", "An open relay test message."),
    BounceType("Unknown", 2048, "Unknown type", "A bounce that could not be classified."),
    BounceType("SoftBounce", 4096, "Soft bounce", "Delivery failed for now (mailbox full)."),
    BounceType("VirusNotification", 8192, "Virus notification", "A virus was reported."),
    BounceType("ChallengeVerification", 16384, "Challenge verification", "A challenge reply."),
    BounceType(
        "BadEmailAddress", 100000, "Invalid email address", "The address is not valid.", True
    ),
    BounceType(
        "SpamComplaint",
        100001,
        "Spam complaint",
        "The subscriber explicitly marked this message as spam.",
        inactive=True,
        can_activate=False,
    ),
    BounceType(
        "ManuallyDeactivated", 100002, "Manually deactivated", "The address was deactivated.", True
    ),
    BounceType("Unconfirmed", 100003, "Registration not confirmed", "Not confirmed yet."),
    BounceType("Blocked", 100006, "ISP block", "The receiving provider blocked the message."),
    BounceType("SMTPApiError", 100007, "SMTP API error", "The SMTP API refused the message."),
    BounceType("InboundError", 100008, "Inbound error", "An inbound processing error."),
    BounceType("DMARCPolicy", 100009, "DMARC policy", "Refused by the sender's DMARC policy."),
    BounceType(
        "TemplateRenderingFailed", 100010, "Template rendering failed", "A template failed."
    ),
)
BOUNCE_TYPES: dict[str, BounceType] = {bounce_type.name: bounce_type for bounce_type in _TYPES}
BOUNCE_TYPE_NAMES = frozenset(BOUNCE_TYPES)
_BY_LOCAL_PART = {name.lower(): bounce_type for name, bounce_type in BOUNCE_TYPES.items()}


def bounce_type_for(message: Message, recipient: Address) -> BounceType | None:
    """The bounce this recipient of this message simulates, if any."""
    if message.bounce_type is not None:
        return BOUNCE_TYPES[message.bounce_type]
    local, _, domain = recipient.email.rpartition("@")
    if domain.lower() != BOUNCE_TESTING_DOMAIN:
        return None
    return _BY_LOCAL_PART.get(local.lower())


def new_bounce_id() -> int:
    """Postmark's bounce IDs exceed 2**53: a client that parses them as doubles loses digits."""
    return 2**53 + 1 + secrets.randbelow(2**63 - 2**53 - 1)


def utc_stamp(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


@dataclass
class Bounce:
    id: int
    bounce_type: BounceType
    email: str
    message: Message
    bounced_at: datetime
    inactive: bool

    @property
    def can_activate(self) -> bool:
        return self.bounce_type.can_activate

    @property
    def record_type(self) -> str:
        return "SpamComplaint" if self.bounce_type.name == "SpamComplaint" else "Bounce"

    def as_json(self) -> dict[str, Any]:
        """The bounce as the Bounce API and the Bounce/SpamComplaint webhooks show it."""
        return {
            "RecordType": self.record_type,
            "MessageStream": self.message.message_stream,
            "ID": self.id,
            "Type": self.bounce_type.name,
            "TypeCode": self.bounce_type.code,
            "Name": self.bounce_type.title,
            "Tag": self.message.tag,
            "MessageID": self.message.message_id,
            "Metadata": self.message.metadata,
            "ServerID": SERVER_ID,
            "Description": self.bounce_type.description,
            "Details": f"Simulated {self.bounce_type.name} for {self.email} by the sandbox",
            "Email": self.email,
            "From": self.message.sender,
            "BouncedAt": utc_stamp(self.bounced_at),
            "DumpAvailable": False,
            "Inactive": self.inactive,
            "CanActivate": self.can_activate,
            "Subject": self.message.subject,
        }


def new_bounce(bounce_type: BounceType, message: Message, recipient: Address) -> Bounce:
    return Bounce(
        id=new_bounce_id(),
        bounce_type=bounce_type,
        email=recipient.email,
        message=message,
        bounced_at=datetime.now(UTC),
        inactive=bounce_type.inactive,
    )


def delivery_json(message: Message, recipient: Address) -> dict[str, Any]:
    """The Delivery webhook body for one recipient."""
    return {
        "RecordType": "Delivery",
        "MessageStream": message.message_stream,
        "MessageID": message.message_id,
        "Recipient": recipient.email,
        "DeliveredAt": utc_stamp(datetime.now(UTC)),
        "Details": "smtp;250 2.0.0 OK (delivered by the sandbox)",
        "Tag": message.tag,
        "ServerID": SERVER_ID,
        "Metadata": message.metadata,
    }
