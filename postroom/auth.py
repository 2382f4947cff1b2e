"""Bearer-token authentication shared by the HTTP processes."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable

from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import SecretStr

from postroom.problems import UNAUTHORIZED, ProblemError

bearer_scheme = HTTPBearer(auto_error=False, description="A token from API_TOKENS.")


def _unauthorized(detail: str) -> ProblemError:
    return ProblemError(UNAUTHORIZED, detail, headers={"WWW-Authenticate": "Bearer"})


def principal_of(
    credentials: HTTPAuthorizationCredentials | None, tokens: Iterable[SecretStr]
) -> str:
    """The caller's principal (a digest of its token), or a 401 problem."""
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise _unauthorized("Send Authorization: Bearer <token>.")
    presented = credentials.credentials.encode()
    matched = False
    # Compare against every configured token, each in constant time, without stopping early,
    # so the answer's timing says nothing about which token (or how much of one) matched.
    for token in tokens:
        matched |= hmac.compare_digest(presented, token.get_secret_value().encode())
    if not matched:
        raise _unauthorized("The bearer token is not valid.")
    return hashlib.sha256(presented).hexdigest()[:32]
