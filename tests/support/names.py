"""Names no other test uses, so tests sharing a server never see each other's data."""

from __future__ import annotations

import uuid


def unique(prefix: str) -> str:
    """A name no other test uses: topics, emails, keys."""
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def address(tag: str) -> str:
    """An email address no other test uses."""
    return f"{unique(tag)}@example.com"
