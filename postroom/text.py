"""Text that people typed, as every process accepts it: no control characters (Unicode
category Cc: NUL, which PostgreSQL refuses in text, line breaks, escapes), and no lone
surrogates (Cs: JSON can carry them, UTF-8 cannot)."""

from __future__ import annotations

import unicodedata

# The same rule as a regular expression, for OpenAPI documents and query or path parameters
# (it reads the same in JSON Schema, Python and pydantic's engine).
NO_CONTROL_CHARACTERS = "^[^\\u0000-\\u001f\\u007f-\\u009f]*$"


def refuse_control_characters(value: str) -> str:
    """A pydantic validator: the value, or a ValueError naming the problem."""
    if any(unicodedata.category(char) in ("Cc", "Cs") for char in value):
        raise ValueError("must not contain control characters")
    return value
