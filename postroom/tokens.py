"""Signed email-verification tokens, shared by the api (which checks them) and the notifier
(which puts them in links). A token binds a user id to one address and expires; it is the
only credential of the verification routes, so it never appears in events or logs."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

from itsdangerous import BadSignature, SignatureExpired, TimestampSigner, URLSafeTimedSerializer

_SALT = "postroom.email-verification.v1"


class TokenInvalid(Exception):
    """Tampered, truncated, or signed with another key."""


class TokenExpired(Exception):
    """Genuine, but older than the allowed age."""


@dataclass(frozen=True, slots=True)
class VerificationClaim:
    user_id: uuid.UUID
    email: str


def _serializer(secret: str, issued_at: datetime | None = None) -> URLSafeTimedSerializer:
    if issued_at is None:
        return URLSafeTimedSerializer(secret, salt=_SALT)
    stamp = int(issued_at.timestamp())

    class _SignerAt(TimestampSigner):
        def get_timestamp(self) -> int:
            return stamp

    return URLSafeTimedSerializer(secret, salt=_SALT, signer=_SignerAt)


def issue_token(
    secret: str, *, user_id: uuid.UUID, email: str, issued_at: datetime | None = None
) -> str:
    """A URL-safe token that proves, until it expires, that `email` belongs to `user_id`.
    `issued_at` back-dates it (re-issuing, drills); by default it is issued now."""
    return _serializer(secret, issued_at).dumps({"uid": str(user_id), "email": email})


def read_token(secret: str, token: str, *, max_age: int) -> VerificationClaim:
    """The claim a token carries, or TokenExpired / TokenInvalid."""
    try:
        data = _serializer(secret).loads(token, max_age=max_age)
    except SignatureExpired as exc:
        raise TokenExpired from exc
    except BadSignature as exc:
        raise TokenInvalid from exc
    try:
        return VerificationClaim(user_id=uuid.UUID(data["uid"]), email=str(data["email"]))
    except (KeyError, TypeError, ValueError) as exc:
        raise TokenInvalid from exc
