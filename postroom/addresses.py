"""An address's identity (invariant 10): one function says when two ways of writing an email
address are the same address, for every part of Postroom.

`address_key` is computed in Python, once, whenever an address is written (users'
`email_key`, notifications' `recipient_key`, bounces' `email_key`, and the suppression list,
whose addresses *are* keys), and SQL only ever compares stored keys with `=`. Never
`lower()`: PostgreSQL's case mapping depends on the database's locale (the C locale folds
ASCII only; `C.UTF-8` and ICU fold `İ`, final sigma and `ß` their own ways), so a rule in SQL
and a rule in Python would disagree on some addresses, and a suppression would miss.

The key is the Unicode Standard's canonical caseless match (definition D145): the address
without surrounding white space, decomposed (NFD), full case folding (`str.casefold`), then
composed (NFC) so the stored form is the short one. Two addresses get one key exactly when
they differ only in letter case or in how their accented letters are encoded. Consequences,
chosen:

- Pure ASCII addresses get what `str.lower()` gives: keys and notification ids written
  before the key existed stay valid.
- Full folding: `ß`, `ẞ` and `SS` are one (`Straße` is `STRASSE` upper-cased), as are the
  Greek capital, small and final sigma, the ligature `ﬁ` and `fi`, the micro sign and mu,
  and Cherokee in either case (folded to its capitals, as Unicode does).
- No language-specific rules: the Turkish dotless i (U+0131) is not `i`, and the dotted
  capital I (U+0130) folds to `i` followed by a combining dot above, not to `i`. An
  address's key never depends on who asks.
- Nothing else is merged: compatibility forms (full-width letters), look-alike letters of
  other scripts, and an internationalized domain against its `xn--` form stay distinct.

Merging two spellings errs on the safe side for the promise "never mail a suppressed
address": a suppression reaches every spelling of its key, and registering a second
spelling of a taken address is refused.

Keys are stored: this function must never change what it returns for an address once keys
exist (a change would need a migration that recomputes every key and reports collisions, as
migration 0008 does). It is idempotent: the key of a key is itself. It follows the Unicode
version of the running Python (3.11: Unicode 14.0); Unicode's stability policy keeps the
normalization and case folding of assigned characters fixed across versions, and addresses
with unassigned code points are refused at the door (the api's and the operator routes'
address validation), so a newer Python gives the same keys.
"""

from __future__ import annotations

import unicodedata


def address_key(email: str) -> str:
    """The identity key of an email address (see the module's docstring); '' for ''."""
    return unicodedata.normalize("NFC", unicodedata.normalize("NFD", email.strip()).casefold())
