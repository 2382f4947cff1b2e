"""Postmark through `postmarker`, with its answers sorted into what the notifier does next.

postmarker is synchronous (requests), so calls run in worker threads, each with a client of
its own (a requests session is not meant to be shared between threads). Three rules keep a
call inside the claim it was made under (invariant 11):
- Sends, searches and reactivations each have threads of their own, a bounded number: a
  flood of one kind never delays another.
- A send runs only under a send slot (`send_slot`), taken before its attempt is stamped in
  the database; there is a thread for every slot, so the call starts at once. The thread
  still refuses a call that has not started within CALL_START_WINDOW of the slot (a process
  stalled meanwhile): that is a definite non-acceptance.
- POSTMARK_TIMEOUT is a total deadline per call, connect, send and read together
  (`notifier/watchdog.py`). A call cut by it is ambiguous, unless it never connected.
So a request reaches Postmark no later than its attempt's stamp + `call_reach`.
"""

from __future__ import annotations

import asyncio
import functools
import threading
import time
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

import requests
import urllib3
from postmarker.core import PostmarkClient
from postmarker.exceptions import ClientError

from notifier.settings import CALL_START_WINDOW, NotifierSettings
from notifier.watchdog import DeadlinePassed, call_with_deadline, watched_session

BATCH_LIMIT = 500
SEARCH_PAGE = 50
# Threads per kind of call. Each notifier sends at most two batches at once (the consumer's
# and the retry loop's); searches run 8 at a time (`Delivery`); an operator's reactivations
# are rare, and past 2 at once they wait for a thread (at most POSTMARK_TIMEOUT, then 503).
SEND_THREADS = 4
SEARCH_THREADS = 8
REACTIVATE_THREADS = 2
INACTIVE_RECIPIENT = 406
BAD_TOKEN = 10

CallKind = Literal["send", "search", "reactivate"]
_THREADS: dict[CallKind, int] = {
    "send": SEND_THREADS,
    "search": SEARCH_THREADS,
    "reactivate": REACTIVATE_THREADS,
}


@dataclass(frozen=True, slots=True)
class Accepted:
    message_id: str


@dataclass(frozen=True, slots=True)
class Rejected:
    """Postmark refused this message for good (an ErrorCode other than 0)."""

    error_code: int
    message: str


MessageResult = Accepted | Rejected


@dataclass(frozen=True, slots=True)
class SendSlot:
    """A send slot held: a thread is free for one send, which must start by `start_by`
    (on the clock of the mailer that gave it)."""

    start_by: float


class PostmarkUnavailable(Exception):
    """429, 5xx, a timeout or a broken connection: worth retrying. `ambiguous` when Postmark
    may have accepted the messages anyway (so look before sending again)."""

    def __init__(self, reason: str, *, ambiguous: bool) -> None:
        super().__init__(reason)
        self.ambiguous = ambiguous


class PostmarkUnauthorized(Exception):
    """The server token is wrong (401 / ErrorCode 10): nothing can be sent until it is fixed."""


def refuse_late_start(slot: SendSlot, now: float) -> None:
    """A send that did not start in time is not made: nothing left, nothing accepted."""
    if now > slot.start_by:
        raise PostmarkUnavailable(
            f"not started: {now - slot.start_by:.3f} s past its start window", ambiguous=False
        )


class Postmark:
    def __init__(self, settings: NotifierSettings) -> None:
        self._settings = settings
        self._timeout = settings.postmark_timeout
        self._local = threading.local()
        self._threads = {
            kind: ThreadPoolExecutor(max_workers=count, thread_name_prefix=f"postmark-{kind}")
            for kind, count in _THREADS.items()
        }
        self._send_slots = asyncio.Semaphore(SEND_THREADS)
        self._reactivations = asyncio.Semaphore(REACTIVATE_THREADS)

    def close(self) -> None:
        for threads in self._threads.values():
            threads.shutdown(wait=False, cancel_futures=True)

    def _client(self) -> PostmarkClient:
        client: PostmarkClient | None = getattr(self._local, "client", None)
        if client is None:
            client = PostmarkClient(
                server_token=self._settings.postmark_server_token.get_secret_value(),
                root_api_url=self._settings.postmark_api_url,
            )
            client._session = watched_session()  # what postmarker's `session` gives out
            self._local.client = client
        return client

    @asynccontextmanager
    async def send_slot(self) -> AsyncIterator[SendSlot]:
        """Hold a send slot: take it before the attempt is stamped, send under it."""
        async with self._send_slots:
            yield SendSlot(start_by=time.monotonic() + CALL_START_WINDOW)

    async def send_batch(
        self, messages: Sequence[dict[str, Any]], *, slot: SendSlot
    ) -> list[MessageResult]:
        """Send up to 500 messages in one call; one result per message, in order. Messages
        that name a Postmark template (`TemplateAlias`) go together to its template batch
        endpoint; a batch never mixes the two kinds."""
        if not 1 <= len(messages) <= BATCH_LIMIT:
            raise ValueError(f"a batch holds 1 to {BATCH_LIMIT} messages, not {len(messages)}")
        templated = {"TemplateAlias" in message for message in messages}
        if len(templated) != 1:
            raise ValueError("a batch holds messages of one kind: templated or rendered")
        if templated.pop():
            answers = await self._call(
                "send", lambda client: client.emails.send_template_batch(*messages), slot=slot
            )
        else:
            answers = await self._call(
                "send", lambda client: client.emails.send_batch(*messages), slot=slot
            )
        if not isinstance(answers, list) or len(answers) != len(messages):
            raise PostmarkUnavailable("batch answer does not match the request", ambiguous=True)
        results: list[MessageResult] = []
        for answer in answers:
            code = int(answer.get("ErrorCode", 0))
            if code == 0 and answer.get("MessageID"):
                results.append(Accepted(str(answer["MessageID"])))
            else:
                results.append(Rejected(code, str(answer.get("Message", ""))))
        return results

    async def find_sent(self, notification_id: str, stream: str) -> str | None:
        """The MessageID of the earliest message Postmark holds for a notification, found by
        the `notification_id` Metadata every attempt's message carried, in the message stream
        they were sent on (Postmark searches one stream, `outbound` unless told); None if it
        holds none (which, while its search index lags, does not yet mean none was accepted)."""

        def search(client: PostmarkClient, at: int) -> Any:
            return client.call(
                "GET",
                "/messages/outbound",
                count=SEARCH_PAGE,
                offset=at,
                messagestream=stream,
                metadata_notification_id=notification_id,
            )

        found: list[tuple[datetime, str]] = []
        offset = 0
        while True:
            page = await self._call("search", functools.partial(search, at=offset))
            messages = page.get("Messages") or []
            for message in messages:
                metadata = message.get("Metadata") or {}
                if metadata.get("notification_id") == notification_id and message.get("MessageID"):
                    found.append((_received(message), str(message["MessageID"])))
            offset += len(messages)
            if not messages or offset >= int(page.get("TotalCount", 0)):
                break
        return min(found)[1] if found else None

    async def reactivate(self, bounce_id: int) -> None:
        """Ask Postmark to let mail reach a bounced address again: done, or an exception,
        within POSTMARK_TIMEOUT (waiting for a thread included)."""
        deadline = time.monotonic() + self._timeout
        try:
            async with asyncio.timeout(self._timeout):
                await self._reactivations.acquire()
        except TimeoutError:
            raise PostmarkUnavailable(
                f"no reactivation could start within {self._timeout:g} s", ambiguous=False
            ) from None
        try:
            await self._call(
                "reactivate", lambda client: client.bounces.activate(bounce_id), deadline=deadline
            )
        finally:
            self._reactivations.release()

    async def _call(
        self,
        kind: CallKind,
        call: Callable[[PostmarkClient], Any],
        *,
        slot: SendSlot | None = None,
        deadline: float | None = None,
    ) -> Any:
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(
                self._threads[kind], lambda: self._run(call, slot=slot, deadline=deadline)
            )
        except DeadlinePassed as exc:
            raise PostmarkUnavailable(f"POSTMARK_TIMEOUT: {exc}", ambiguous=exc.connected) from exc
        except ClientError as exc:
            raise self._translate(exc) from exc
        except requests.HTTPError as exc:  # an error answer without Postmark's JSON
            status = exc.response.status_code if exc.response is not None else 0
            if status == 401:
                raise PostmarkUnauthorized("Postmark answered 401 Unauthorized") from exc
            if 400 <= status < 500 and status not in (408, 429):
                # Refused as it stands (too large, not JSON...): sending it again changes nothing.
                raise RequestRejected(0, f"HTTP {status}") from exc
            raise PostmarkUnavailable(f"HTTP {status}", ambiguous=status != 429) from exc
        except requests.ConnectTimeout as exc:  # no connection: the request never left
            raise PostmarkUnavailable(f"could not connect: {exc}", ambiguous=False) from exc
        except requests.Timeout as exc:  # sent, and no answer in time: it may have landed
            raise PostmarkUnavailable(f"timed out: {exc}", ambiguous=True) from exc
        except requests.ConnectionError as exc:
            raise PostmarkUnavailable(
                f"{type(exc).__name__}: {exc}", ambiguous=not _refused(exc)
            ) from exc
        except requests.RequestException as exc:
            raise PostmarkUnavailable(f"{type(exc).__name__}: {exc}", ambiguous=True) from exc
        except AssertionError as exc:
            # postmarker checks a message before any request (a body, say): nothing left.
            raise RequestRejected(0, f"refused before sending: {exc}") from exc
        except (KeyError, TypeError, ValueError) as exc:
            # An answer postmarker cannot read (a proxy's JSON, a body of the wrong shape):
            # whatever it was, the request reached something that may have passed it on.
            raise PostmarkUnavailable(
                f"unreadable answer: {type(exc).__name__}", ambiguous=True
            ) from exc

    def _run(
        self,
        call: Callable[[PostmarkClient], Any],
        *,
        slot: SendSlot | None,
        deadline: float | None,
    ) -> Any:
        """In a worker thread: start the call if still in time, and cut it at its deadline."""
        started = time.monotonic()
        if slot is not None:
            refuse_late_start(slot, started)
        ends = (
            started + self._timeout if deadline is None else min(deadline, started + self._timeout)
        )
        client = self._client()
        # requests' own timeout bounds the connect, before the watchdog has a socket to shut.
        left = ends - started
        client.timeout = (left, left)
        return call_with_deadline(lambda: call(client), ends)

    @staticmethod
    def _translate(exc: ClientError) -> Exception:
        code = getattr(exc, "error_code", None)
        status = exc.__cause__.response.status_code if _has_response(exc.__cause__) else 0
        if code == BAD_TOKEN or status == 401:
            return PostmarkUnauthorized(str(exc))
        if status == 429 or code == 429:
            return PostmarkUnavailable(str(exc), ambiguous=False)
        if status >= 500:
            return PostmarkUnavailable(str(exc), ambiguous=True)
        return RequestRejected(int(code or 0), str(exc))


class RequestRejected(Exception):
    """Postmark refused the whole request (an ErrorCode on the call, not per message)."""

    def __init__(self, error_code: int, message: str) -> None:
        super().__init__(message)
        self.error_code = error_code


_LATEST = datetime.max.replace(tzinfo=UTC)


def _received(message: dict[str, Any]) -> datetime:
    """When Postmark received a message (time zones compared as times, not as text); an
    unreadable stamp sorts last."""
    try:
        stamp = datetime.fromisoformat(str(message.get("ReceivedAt")))
    except ValueError:
        return _LATEST
    return stamp if stamp.tzinfo else stamp.replace(tzinfo=UTC)


def _refused(error: requests.ConnectionError) -> bool:
    """The connection was never made (refused, unresolvable): nothing reached Postmark."""
    cause: BaseException | None = error
    for _ in range(10):  # a chain of causes is short; never follow a loop
        if cause is None:
            break
        if isinstance(cause, urllib3.exceptions.NewConnectionError | ConnectionRefusedError):
            return True
        cause = cause.__cause__ or cause.__context__ or _reason(cause)
    return False


def _reason(error: BaseException) -> BaseException | None:
    reason = getattr(error, "reason", None)
    if isinstance(reason, BaseException):
        return reason
    args = getattr(error, "args", ())
    return next((arg for arg in args if isinstance(arg, BaseException)), None)


def _has_response(error: BaseException | None) -> bool:
    return isinstance(error, requests.HTTPError) and error.response is not None
