"""An address's identity (invariant 10): one function says when two ways of writing an email
address are the same address, for every part of Postroom.

`address_key` is computed in Python, once, whenever an address is written (users'
`email_key`, notifications' `recipient_key`, bounces' `email_key`, and the suppression list,
whose addresses *are* keys), and SQL only ever compares stored keys with `=`. Never
`lower()`: PostgreSQL's case mapping depends on the database's locale (the C locale folds
ASCII only; `C.UTF-8` and ICU fold `İ`, final sigma and `ß` their own ways), so a rule in SQL
and a rule in Python would disagree on some addresses, and a suppression would miss.

The key has two halves, each keyed the way the systems that deliver mail tell names apart.
The address is first read as the api reads it (pydantic's `EmailStr`, email-validator
underneath; `Name <address>` gives the address): every entry point (the api, webhooks, the
operator routes, the command) gets one key for one address whatever form it was given in.

- The domain is the one DNS resolves: IDNA's UTS 46 mapping, non-transitional, as
  email-validator normalizes it. Letter case, full-width letters, an ideographic full stop,
  and an `xn--` label against its Unicode form are one domain; `ß` and `ss`, and the final
  and the medial sigma, are different domains, as IDNA 2008 has them (`straße.de` and
  `strasse.de` are two registrations, two owners).
- The local part is the Unicode Standard's canonical caseless match (definition D145):
  decomposed (NFD), full case folding (`str.casefold`), then composed (NFC) so the stored
  form is the short one. Mail servers do not agree on letter case in local parts; treating
  case as one mailbox is what users expect. Full folding makes `ß`, `ẞ` and `SS` one (`Straße`
  is `STRASSE` upper-cased), as are the Greek sigmas, the ligature `ﬁ` and `fi`, the micro
  sign and mu, and Cherokee in either case (folded to its capitals, as Unicode does). No
  language-specific rule: the Turkish dotless i (U+0131) is not `i`, and the dotted capital I
  (U+0130) folds to `i` followed by a combining dot above. An address's key never depends on
  who asks.
- A string that is not an address (a webhook's garbage) is keyed whole by the local part's
  rule, so it can still be listed, suppressed and erased.

Pure ASCII addresses get what `str.lower()` gives (but for `Name <address>` and `xn--`
domains, which the api has always stored as the address alone and in Unicode): keys and
notification ids written before the key existed stay valid. Whether a change of spelling
keeps a mailbox proven (a verified user changing the way their address is written) is a
narrower question: `same_mailbox`.

Merging two spellings errs on the safe side for the promise "never mail a suppressed
address": a suppression reaches every spelling of its key, and registering a second
spelling of a taken address is refused.

Keys are stored: when this function changes what it returns, a migration recomputes every
stored key and reports collisions (0008 introduced keys; 0011 moved the domain to IDNA's
rule). It is idempotent: the key of a key is itself. It follows the Unicode
version of the running Python (3.11: Unicode 14.0); Unicode's stability policy keeps the
normalization and case folding of assigned characters fixed across versions, and addresses
with unassigned code points are refused at the door (the api's and the operator routes'
address validation), so a newer Python gives the same keys.
"""

from __future__ import annotations

import unicodedata
from functools import lru_cache

from pydantic.networks import validate_email
from pydantic_core import PydanticCustomError


def address_key(email: str) -> str:
    """The identity key of an email address (see the module's docstring); '' for ''."""
    text = email.strip()
    lowered = text.lower()
    if text.isascii() and "<" not in text and "xn--" not in lowered:
        # What the whole rule gives for plain ASCII, without parsing: most addresses.
        return lowered
    return _key(text)


@lru_cache(maxsize=4096)
def _key(text: str) -> str:
    try:
        _, address = validate_email(text)
    except PydanticCustomError:
        return _fold(text)
    local, _, domain = address.rpartition("@")
    return f"{_fold(local)}@{domain}"


def _fold(text: str) -> str:
    return unicodedata.normalize("NFC", unicodedata.normalize("NFD", text).casefold())


def same_mailbox(old: str, new: str) -> bool:
    """Whether an address written as `old` and then as `new` is one proven mailbox: the two
    differ at most in letter case, one letter for one letter (`str.lower`), as the api
    stores them. A change that only full folding or IDNA makes equal (`ß` for `ss`, a
    ligature, another sigma, a domain's other form) is one identity, so no other user may
    take it, but a new spelling to deliver to: it must be proven again."""
    return old.lower() == new.lower()
