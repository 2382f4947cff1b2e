"""The sandbox's one piece of state and the rule for accepting a message."""

from __future__ import annotations

import hmac
import time
from typing import Annotated, Any

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPBasic, HTTPBasicCredentials

from sandbox.bounces import BOUNCE_TYPE_NAMES, Bounce, bounce_type_for, delivery_json, new_bounce
from sandbox.faults import FaultInjector
from sandbox.messages import Message, PostmarkError, parse_message
from sandbox.settings import TEST_TOKEN, SandboxSettings
from sandbox.store import Store
from sandbox.webhooks import WebhookSender


def _inactive_error(addresses: list[str]) -> PostmarkError:
    return PostmarkError(
        422,
        406,
        "You tried to send to recipient(s) that have been marked as inactive. "
        f"Found inactive addresses: {', '.join(addresses)}. Inactive recipients are ones that "
        "have generated a hard bounce, a spam complaint, or a manual suppression.",
    )


class Sandbox:
    def __init__(self, settings: SandboxSettings) -> None:
        self.settings = settings
        self.store = Store(max_messages=settings.sandbox_max_messages)
        self.faults = FaultInjector(seed=settings.sandbox_fault_seed)
        username = settings.webhook_username
        password = settings.webhook_password.get_secret_value()
        self.webhooks = WebhookSender(
            url=settings.sandbox_webhook_url,
            auth=(username, password) if username or password else None,
            delay=settings.sandbox_webhook_delay_ms / 1000,
            stats=self.faults.stats,
        )

    def token_kind(self, token: str | None) -> str | None:
        """Which token this is: the configured one ("server"), Postmark's test one, or neither."""
        if token == TEST_TOKEN:
            return "test"
        if token and token == self.settings.postmark_server_token.get_secret_value():
            return "server"
        return None

    def accept(
        self, data: object, *, test: bool, template_alias: str | None = None
    ) -> dict[str, Any]:
        """Validate, check suppressions, capture and schedule webhooks; the send answer.
        `template_alias` names the template a rendered message came from: it is given by the
        template endpoints, never read from the body, so a plain message never claims one."""
        message = parse_message(data, known_bounce_types=BOUNCE_TYPE_NAMES)
        message.template_alias = template_alias
        if test:
            return message.send_answer(test=True)
        inactive = self.store.inactive_among([address.email for address in message.recipients])
        if inactive:
            raise _inactive_error(inactive)
        message.searchable_at = time.monotonic() + self.faults.faults.search_delay_ms / 1000
        self.store.add(message)
        self._simulate_outcomes(message)
        return message.send_answer()

    def _simulate_outcomes(self, message: Message) -> None:
        seen: set[str] = set()
        for recipient in message.recipients:
            if recipient.key in seen:
                continue
            seen.add(recipient.key)
            bounce_type = bounce_type_for(message, recipient)
            if bounce_type is not None:
                bounce = new_bounce(bounce_type, message, recipient)
                self.store.add_bounce(bounce)
                self.webhooks.post(bounce.as_json())
            elif self.settings.sandbox_delivery_webhooks:
                self.webhooks.post(delivery_json(message, recipient))

    def activate(self, bounce: Bounce) -> None:
        if not bounce.can_activate:
            raise PostmarkError(
                422, 1003, "Cannot activate bounce: spam complaints cannot be reactivated."
            )
        self.store.activate(bounce)

    def stats(self) -> dict[str, Any]:
        stats = self.faults.stats
        return {
            "calls": stats.calls,
            "errors_injected": stats.errors_injected,
            "timeouts_injected": stats.timeouts_injected,
            "trickles_injected": stats.trickles_injected,
            "captured": self.store.captured_total,
            "stored": len(self.store),
            "webhooks_delivered": stats.webhooks_delivered,
            "webhooks_failed": stats.webhooks_failed,
            "batch_sizes": {str(size): calls for size, calls in sorted(stats.batch_sizes.items())},
        }


def get_sandbox(request: Request) -> Sandbox:
    sandbox: Sandbox = request.app.state.sandbox
    return sandbox


SandboxDep = Annotated[Sandbox, Depends(get_sandbox)]


_basic = HTTPBasic(auto_error=False)


def require_operator(
    request: Request, credentials: Annotated[HTTPBasicCredentials | None, Depends(_basic)]
) -> None:
    """Outside development, the capture API and the inbox pages (which show every
    verification link) answer only to the server token: in the X-Postmark-Server-Token
    header, or as the password of HTTP basic auth (a browser asks for it)."""
    sandbox = get_sandbox(request)
    if sandbox.settings.app_env == "development":
        return
    expected = sandbox.settings.postmark_server_token.get_secret_value().encode()
    given = request.headers.get("x-postmark-server-token") or (
        credentials.password if credentials else ""
    )
    if not (given and hmac.compare_digest(given.encode(), expected)):
        raise HTTPException(
            401,
            "The sandbox's pages and API need the server token outside development.",
            headers={"WWW-Authenticate": 'Basic realm="postroom-sandbox"'},
        )


OperatorDep = Depends(require_operator)
