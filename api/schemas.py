"""Request and response bodies of the REST API."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, EmailStr, Field, StringConstraints

from api.users import User
from postroom.locales import MAX_LENGTH as MAX_LOCALE_LENGTH
from postroom.locales import PATTERN as LOCALE_PATTERN
from postroom.locales import InvalidLocale, canonical_locale
from postroom.text import NO_CONTROL_CHARACTERS, refuse_control_characters

# RFC 5321 caps a forward path at 256 octets including the angle brackets.
Email = Annotated[EmailStr, Field(max_length=254, examples=["ada@example.com"])]
Name = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=1, max_length=200),
    AfterValidator(refuse_control_characters),
    # The same rule, published for clients (Unicode category Cc: U+0000-U+001F, U+007F-U+009F).
    Field(examples=["Ada Lovelace"], json_schema_extra={"pattern": NO_CONTROL_CHARACTERS}),
]


def _canonical_locale(value: str) -> str:
    try:
        return canonical_locale(value)
    except InvalidLocale as exc:
        raise ValueError(str(exc)) from None


Locale = Annotated[
    str,
    StringConstraints(max_length=MAX_LOCALE_LENGTH, pattern=LOCALE_PATTERN),
    AfterValidator(_canonical_locale),
    Field(
        description="A well-formed BCP 47 language tag: the language of the user's emails "
        "(stored in canonical form: `en-us` becomes `en-US`). Emails fall back to the "
        "nearest language there are templates for (de-AT, de, then DEFAULT_LOCALE).",
        examples=["de-AT"],
    ),
]


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid")


class UserCreate(_Request):
    email: Email
    name: Name
    locale: Locale | None = None


class UserPatch(_Request):
    """Only the fields present change. `name` and `email` may not be null, so their default
    (absent) is not a value of their type and the published schema has no `null` for them;
    `locale` may: null takes it away."""

    name: Name = None  # type: ignore[assignment]
    email: Email = None  # type: ignore[assignment]
    # null clears it: the user's emails go back to DEFAULT_LOCALE.
    locale: Locale | None = None

    @property
    def clears_locale(self) -> bool:
        return "locale" in self.model_fields_set and self.locale is None


class EmailVerificationRequest(_Request):
    token: Annotated[str, StringConstraints(min_length=1, max_length=1024)]


class UserOut(BaseModel):
    id: uuid.UUID
    email: str
    name: str
    email_verified: bool
    email_verified_at: datetime | None
    version: int
    created_at: datetime
    updated_at: datetime
    locale: str | None

    @classmethod
    def from_row(cls, row: User) -> UserOut:
        return cls(
            id=row.id,
            email=row.email,
            name=row.name,
            email_verified=row.email_verified_at is not None,
            email_verified_at=row.email_verified_at,
            version=row.version,
            created_at=row.created_at,
            updated_at=row.updated_at,
            locale=row.locale,
        )


class VerificationRequested(BaseModel):
    """A new verification link is on its way to the user's current address."""

    user_id: uuid.UUID
    email: str
    requested_at: datetime
