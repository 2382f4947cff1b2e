"""What the sandbox remembers, in memory: captured messages, bounces, inactive addresses.

A message lives in two places. Postmark's record of what was sent is what the outbound search
reads, and the notifier asks that search whether an earlier attempt went out before it sends
again: deleting mail in the dev inbox, like a recipient deleting theirs, never touches it (only
the `max_messages` bound ages it out, as Postmark's retention does). The inbox is what the dev
inbox shows: the same messages, less those deleted there.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator, Mapping

from sandbox.bounces import Bounce
from sandbox.inbox_filter import InboxFilter
from sandbox.messages import Message
from sandbox.templates import Templates


class Store:
    def __init__(self, *, max_messages: int) -> None:
        self.max_messages = max_messages
        self._messages: OrderedDict[str, Message] = OrderedDict()  # Postmark's record
        self._inbox: OrderedDict[str, Message] = OrderedDict()
        self._bounces: OrderedDict[int, Bounce] = OrderedDict()
        # case-folded address -> the bounce that made it inactive
        self._inactive: dict[str, Bounce] = {}
        self.captured_total = 0
        # The server's templates: set up by hand, so clearing the messages keeps them.
        self.templates = Templates()

    def __len__(self) -> int:
        return len(self._messages)

    def add(self, message: Message) -> None:
        self._messages[message.message_id] = message
        self._inbox[message.message_id] = message
        self.captured_total += 1
        while len(self._messages) > self.max_messages:
            oldest, _ = self._messages.popitem(last=False)
            self._inbox.pop(oldest, None)

    def get(self, message_id: str) -> Message | None:
        """A sent message, as Postmark's record has it (deleted from the inbox or not)."""
        return self._messages.get(message_id)

    def newest_first(self) -> Iterator[Message]:
        return reversed(self._messages.values())

    @property
    def inbox_size(self) -> int:
        return len(self._inbox)

    def in_inbox(self, message_id: str) -> Message | None:
        return self._inbox.get(message_id)

    def inbox(self, wanted: InboxFilter) -> list[Message]:
        """The inbox's messages that match, newest first."""
        return [message for message in reversed(self._inbox.values()) if wanted.matches(message)]

    def delete_from_inbox(self, message_id: str) -> bool:
        """Take a message out of the inbox; False when it was not there."""
        return self._inbox.pop(message_id, None) is not None

    def search(
        self,
        *,
        recipient: str | None = None,
        sender: str | None = None,
        tag: str | None = None,
        subject: str | None = None,
        stream: str | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> list[Message]:
        """Messages that match every given filter, newest first."""
        wanted_recipient = recipient.lower() if recipient else None
        wanted_sender = sender.lower() if sender else None
        found: list[Message] = []
        for message in self.newest_first():
            if wanted_recipient is not None and all(
                address.key != wanted_recipient for address in message.recipients
            ):
                continue
            if wanted_sender is not None and wanted_sender not in message.sender.lower():
                continue
            if tag is not None and message.tag != tag:
                continue
            if subject is not None and subject.lower() not in message.subject.lower():
                continue
            if stream is not None and message.message_stream != stream:
                continue
            if metadata and any(message.metadata.get(k) != v for k, v in metadata.items()):
                continue
            found.append(message)
        return found

    def add_bounce(self, bounce: Bounce) -> None:
        self._bounces[bounce.id] = bounce
        if bounce.inactive:
            self._inactive[bounce.email.lower()] = bounce
        while len(self._bounces) > self.max_messages:
            self._bounces.popitem(last=False)

    def bounce(self, bounce_id: int) -> Bounce | None:
        return self._bounces.get(bounce_id)

    def inactive_among(self, addresses: list[str]) -> list[str]:
        """The given addresses that may not receive mail, in the order given."""
        return [address for address in addresses if address.lower() in self._inactive]

    def activate(self, bounce: Bounce) -> None:
        bounce.inactive = False
        current = self._inactive.get(bounce.email.lower())
        if current is not None:
            current.inactive = False
            del self._inactive[bounce.email.lower()]

    def clear(self) -> None:
        """A clean slate for the next test: an empty inbox, no bounces, every address active
        again. Postmark's record of what was sent stays, for the notifier's send-once search."""
        self._inbox.clear()
        self._bounces.clear()
        self._inactive.clear()
