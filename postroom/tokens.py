"""Signed email-verification tokens, shared by the api (which checks them) and the notifier
(which puts them in links). A token binds a user id to one address and expires; it is the
only credential of the verification routes, so it never appears in events or logs.

A token is signed, not encrypted: anyone holding the link can read what it carries. So it
carries the address only as a keyed digest (HMAC under EMAIL_TOKEN_SECRET of the address as
the api compares spellings, `str.lower`), which proves the address without showing it: the
page the link opens reads the address from the user's row. Tokens issued before carried the
address itself (`email`); they are read as they are until they expire."""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import uuid
from dataclasses import dataclass, field
from datetime import datetime

from itsdangerous import BadSignature, SignatureExpired, TimestampSigner, URLSafeTimedSerializer

_SALT = "postroom.email-verification.v1"


class TokenInvalid(Exception):
    """Tampered, truncated, or signed with another key."""


class TokenExpired(Exception):
    """Genuine, but older than the allowed age."""


@functools.lru_cache(maxsize=8)
def _digest_key(secret: str) -> bytes:
    """The address digests' own key, derived from EMAIL_TOKEN_SECRET (not the signing key)."""
    return hashlib.sha256(f"{_SALT}:address:{secret}".encode()).digest()


@dataclass(frozen=True, slots=True)
class VerificationClaim:
    """What a genuine token says: this user, and (as a digest) this address."""

    user_id: uuid.UUID
    address_digest: str
    _secret: str = field(repr=False, compare=False)

    def names(self, email: str) -> bool:
        """Whether the token was issued for `email` (in any letter case)."""
        return hmac.compare_digest(self.address_digest, address_digest(self._secret, email))


def address_digest(secret: str, email: str) -> str:
    """The keyed digest of an address a token carries: 128 bits, URL-safe."""
    mac = hmac.new(_digest_key(secret), email.lower().encode(), hashlib.sha256).digest()[:16]
    return base64.urlsafe_b64encode(mac).rstrip(b"=").decode()


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
    return _serializer(secret, issued_at).dumps(
        {"uid": str(user_id), "ad": address_digest(secret, email)}
    )


def read_token(secret: str, token: str, *, max_age: int) -> VerificationClaim:
    """The claim a token carries, or TokenExpired / TokenInvalid."""
    try:
        data = _serializer(secret).loads(token, max_age=max_age)
    except SignatureExpired as exc:
        raise TokenExpired from exc
    except BadSignature as exc:
        raise TokenInvalid from exc
    try:
        user_id = uuid.UUID(data["uid"])
        digest = str(data["ad"]) if "ad" in data else address_digest(secret, str(data["email"]))
    except (KeyError, TypeError, ValueError) as exc:
        raise TokenInvalid from exc
    return VerificationClaim(user_id, digest, secret)
