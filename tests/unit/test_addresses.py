"""The address key (postroom/addresses.py): what it joins, what it keeps apart, and that it
never changes for an address once stored."""

from __future__ import annotations

import string
import unicodedata

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from postroom.addresses import _key, address_key

# Stored keys must stay what they are: each of these is in some database.
PINNED = [
    ("Ada@Example.COM", "ada@example.com"),
    ("  ada@example.com\n", "ada@example.com"),
    ("Émile.x@example.com", "émile.x@example.com"),
    ("E\u0301MILE.x@example.com", "émile.x@example.com"),
    ("Дмитрий.X@example.com", "дмитрий.x@example.com"),
    ("ZOË.x@example.com", "zoë.x@example.com"),
    ("Straße@example.com", "strasse@example.com"),
    ("STRAẞE@example.com", "strasse@example.com"),
    ("ΟΔΟΣ@example.com", "οδοσ@example.com"),
    ("οδος@example.com", "οδοσ@example.com"),
    ("İstanbul@example.com", "i\u0307stanbul@example.com"),
    ("\u0131spanak@example.com", "\u0131spanak@example.com"),
    ("ԵՒ@example.com", "եւ@example.com"),
    ("և@example.com", "եւ@example.com"),
    ("\u13a0\uab70@example.com", "\u13a0\u13a0@example.com"),
    ("漢字@example.com", "漢字@example.com"),
    ("\ufb01@example.com", "fi@example.com"),
    ("", ""),
    # The domain is IDNA's (since 0011): one name in DNS, one key; two names, two keys.
    ("a@Straße.de", "a@straße.de"),
    ("a@xn--strae-oqa.de", "a@straße.de"),
    ("a@STRASSE.de", "a@strasse.de"),
    ("a@XN--BCHER-KVA.example", "a@bücher.example"),
    ("a@\uff45\uff58\uff41\uff4d\uff50\uff4c\uff45.com", "a@example.com"),
    ("u@example\u3002com", "u@example.com"),
    ("x@ΣΟΦΟΣ.gr", "x@σοφοσ.gr"),
    ("x@σοφος.gr", "x@σοφος.gr"),
    ("Ada Lovelace <Ada@Example.COM>", "ada@example.com"),
]


@pytest.mark.parametrize(("address", "key"), PINNED)
def test_keys_once_stored_never_change(address: str, key: str) -> None:
    assert address_key(address) == key


@given(st.text(alphabet=string.printable.replace("<", "").strip() + "@."))
def test_an_ascii_address_keys_as_lower_did(address: str) -> None:
    # Not `Name <address>`, nor an `xn--` domain, which the api always stored in Unicode.
    assume("xn--" not in address.lower())
    assert address_key(address) == address.strip().lower()
    # The shortcut for plain ASCII is what parsing it would give.
    assert _key(address.strip()) == address.strip().lower()


@given(st.text())
def test_the_key_of_a_key_is_itself_and_is_composed(address: str) -> None:
    key = address_key(address)
    assert address_key(key) == key
    assert unicodedata.is_normalized("NFC", key)


@given(st.text())
def test_composed_and_decomposed_spellings_are_one(address: str) -> None:
    key = address_key(address)
    assert address_key(unicodedata.normalize("NFD", address)) == key
    assert address_key(unicodedata.normalize("NFC", address)) == key


# Letters whose upper and lower case map one to one, or fold alike (sharp s, final sigma,
# Cherokee); not the Turkish dotless i and dotted capital I, which case-map across to `I`, `i`.
LETTERS = (
    "abcxyzÀÉÎÕÜàéîõüÿĀāŁłŒœŠšǄǅǆŉßẞ"
    "ΑΓΔΣΩαγδσςωάΐΰ"
    "АБЖЯабжяЁё"
    "ԱԲՒաբւև"
    "\u13a0\u13a1\u13f5\uab70\uab71\u13f8"
)


@given(st.text(alphabet=LETTERS))
def test_a_word_in_any_letter_case_is_one(word: str) -> None:
    key = address_key(word)
    assert address_key(word.upper()) == key
    assert address_key(word.lower()) == key
    assert address_key(word.title()) == key
