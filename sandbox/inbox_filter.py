"""The dev inbox's search: one set of query parameters for its pages and its JSON API, so a
search's URL can be shared and the same search can be scripted."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import urlencode

from sandbox.messages import Message

METADATA_PREFIX = "metadata_"


@dataclass(frozen=True)
class InboxFilter:
    """Every given condition must hold; text is compared case-insensitively.

    `q` is the search box: found in a recipient's address or name, the subject or the tag.
    `to` is one recipient's whole address, `subject` part of the subject, `tag` the whole tag,
    `metadata` exact values of Metadata fields."""

    q: str = ""
    to: str = ""
    subject: str = ""
    tag: str = ""
    metadata: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_params(cls, params: Mapping[str, str]) -> InboxFilter:
        return cls(
            q=params.get("q", "").strip(),
            to=params.get("to", "").strip(),
            subject=params.get("subject", "").strip(),
            tag=params.get("tag", "").strip(),
            metadata={
                key.removeprefix(METADATA_PREFIX): value
                for key, value in params.items()
                if key.startswith(METADATA_PREFIX) and len(key) > len(METADATA_PREFIX)
            },
        )

    def __bool__(self) -> bool:
        return bool(self.q or self.to or self.subject or self.tag or self.metadata)

    def fields(self) -> list[tuple[str, str]]:
        """The conditions other than `q`, as query parameters, in a stable order."""
        given = [("to", self.to), ("subject", self.subject), ("tag", self.tag)]
        given += [(METADATA_PREFIX + name, value) for name, value in self.metadata.items()]
        return [(name, value) for name, value in given if value]

    def query_string(self) -> str:
        return urlencode([("q", self.q), *self.fields()] if self.q else self.fields())

    def matches(self, message: Message) -> bool:
        recipients = message.recipients
        tag = (message.tag or "").casefold()
        if self.to and all(address.key != self.to.lower() for address in recipients):
            return False
        if self.subject and self.subject.casefold() not in message.subject.casefold():
            return False
        if self.tag and tag != self.tag.casefold():
            return False
        if any(message.metadata.get(name) != value for name, value in self.metadata.items()):
            return False
        if self.q:
            wanted = self.q.casefold()
            haystacks = [message.subject.casefold(), tag]
            for address in recipients:
                haystacks += [address.email.casefold(), address.name.casefold()]
            return any(wanted in haystack for haystack in haystacks)
        return True
