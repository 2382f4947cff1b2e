"""The dev inbox's search: one set of query parameters for its pages and its JSON API, so a
search's URL can be shared and the same search can be scripted."""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from urllib.parse import urlencode

from sandbox.messages import Message

METADATA_PREFIX = "metadata_"
FIELDS = ("q", "to", "subject", "tag")


def fold(text: str) -> str:
    """Text as every search compares it: Unicode case folding (ß matches ss) of normalized
    text (a precomposed é matches an e with a combining accent), without the dot folding
    leaves on İ, so that "istanbul" finds "İstanbul"."""
    folded = unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", text).casefold())
    return folded.replace("i\u0307", "i")


def unknown_params(names: Iterable[str]) -> list[str]:
    """The query parameters a search does not take, so that a typo such as `?too=` is refused
    instead of answered with every message."""
    return sorted(
        {
            name
            for name in names
            if name not in FIELDS
            and not (name.startswith(METADATA_PREFIX) and len(name) > len(METADATA_PREFIX))
        }
    )


@dataclass(frozen=True)
class InboxFilter:
    """Every given condition must hold; text is compared as `fold` makes it, metadata exactly.

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
        tag = fold(message.tag or "")
        if self.to and all(fold(address.email) != fold(self.to) for address in recipients):
            return False
        if self.subject and fold(self.subject) not in fold(message.subject):
            return False
        if self.tag and tag != fold(self.tag):
            return False
        if any(message.metadata.get(name) != value for name, value in self.metadata.items()):
            return False
        if self.q:
            wanted = fold(self.q)
            haystacks = [fold(message.subject), tag]
            for address in recipients:
                haystacks += [fold(address.email), fold(address.name)]
            return any(wanted in haystack for haystack in haystacks)
        return True
