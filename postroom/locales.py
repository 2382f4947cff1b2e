"""Locales: BCP 47 language tags, read once in one form, and the order templates are looked
up in (RFC 4647 lookup: drop subtags from the end until something is found)."""

from __future__ import annotations

import langcodes

MAX_LENGTH = 35  # RFC 5646 advises at least 35 characters of room for a tag


class InvalidLocale(ValueError):
    """Not a well-formed, registered BCP 47 language tag."""


def canonical_locale(tag: str) -> str:
    """The tag in its canonical form (`en-us` -> `en-US`, `de_AT` -> `de-AT`), or
    InvalidLocale."""
    tag = tag.strip()
    if not tag or len(tag) > MAX_LENGTH or not langcodes.tag_is_valid(tag):
        raise InvalidLocale(f"{tag[:MAX_LENGTH]!r} is not a BCP 47 language tag (e.g. de-AT)")
    return str(langcodes.standardize_tag(tag))


def lookup_chain(locale: str | None, default: str) -> list[str]:
    """Where to look, most specific first: `de-AT` -> de-AT, de, then the default locale's
    own chain (`en-GB` -> en-GB, en). A locale that cannot be read falls back to the default."""
    chain: list[str] = []
    for tag in (locale, default):
        if not tag:
            continue
        try:
            parts = canonical_locale(tag).split("-")
        except InvalidLocale:
            continue
        while parts:
            candidate = "-".join(parts)
            if candidate not in chain:
                chain.append(candidate)
            parts.pop()
            if parts and len(parts[-1]) == 1:  # a singleton (x-, u-) never ends a tag
                parts.pop()
    return chain
