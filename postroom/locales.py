"""Locales: BCP 47 language tags, read once in one form, and the order templates are looked
up in (RFC 4647 lookup: drop subtags from the end until something is found).

A tag is accepted when it is well formed (the pattern below, published in the API's schema:
language, then optional script, region, variants, extensions and a private-use part) and
kept in its canonical form: registered tags as the registry writes them (`en-us` -> `en-US`,
`iw` -> `he`), others with each subtag in its conventional case. A well-formed tag nobody
has templates for is no error: its emails fall back to DEFAULT_LOCALE."""

from __future__ import annotations

import functools
import re

import langcodes

MAX_LENGTH = 35  # RFC 5646 advises at least 35 characters of room for a tag
PATTERN = (
    r"^[A-Za-z]{2,3}"  # language
    r"(-[A-Za-z]{4})?"  # script
    r"(-([A-Za-z]{2}|[0-9]{3}))?"  # region
    r"(-([A-Za-z0-9]{5,8}|[0-9][A-Za-z0-9]{3}))*"  # variants
    r"(-[0-9A-WY-Za-wy-z](-[A-Za-z0-9]{2,8})+)*"  # extensions
    r"(-[Xx](-[A-Za-z0-9]{1,8})+)?$"  # private use
)
_WELL_FORMED = re.compile(PATTERN)


class InvalidLocale(ValueError):
    """Not a well-formed BCP 47 language tag."""


@functools.lru_cache(maxsize=1024)
def canonical_locale(tag: str) -> str:
    """The tag in its canonical form (`en-us` -> `en-US`), or InvalidLocale. Cached: every
    email rendered asks it of its user's locale (a refusal is not cached, and is cheap for a
    string too long to be a tag)."""
    if len(tag) > MAX_LENGTH or not _WELL_FORMED.fullmatch(tag):  # `$` lets "en\n" by
        raise InvalidLocale(f"{tag[:MAX_LENGTH]!r} is not a BCP 47 language tag (e.g. de-AT)")
    if langcodes.tag_is_valid(tag):
        return str(langcodes.standardize_tag(tag))
    return "-".join(_cased(tag.split("-")))


def _cased(subtags: list[str]) -> list[str]:
    """RFC 5646's conventions: language lower case, script title case, region upper case,
    everything else (and everything after a singleton) lower case."""
    out = [subtags[0].lower()]
    after_singleton = False
    for subtag in subtags[1:]:
        if len(subtag) == 1:
            after_singleton = True
        if not after_singleton and len(subtag) == 4 and subtag.isalpha():
            out.append(subtag.title())
        elif not after_singleton and (len(subtag) == 2 or (len(subtag) == 3 and subtag.isdigit())):
            out.append(subtag.upper())
        else:
            out.append(subtag.lower())
    return out


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
