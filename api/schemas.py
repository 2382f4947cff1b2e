"""Request and response bodies of the REST API."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, EmailStr, Field, StringConstraints, model_validator
from pydantic.json_schema import SkipJsonSchema

# RFC 5321 caps a forward path at 256 octets including the angle brackets.
Email = Annotated[EmailStr, Field(max_length=254, examples=["ada@example.com"])]
Name = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=1, max_length=200),
    Field(examples=["Ada Lovelace"]),
]


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid")


class UserCreate(_Request):
    email: Email
    name: Name


class UserPatch(_Request):
    """Only the fields present change; `null` is not a value either field can take."""

    # Optional, but never null: the published schema says so and the validator enforces it.
    name: Name | SkipJsonSchema[None] = None
    email: Email | SkipJsonSchema[None] = None

    @model_validator(mode="before")
    @classmethod
    def _no_nulls(cls, data: Any) -> Any:
        if isinstance(data, dict):
            nulls = [key for key in ("name", "email") if key in data and data[key] is None]
            if nulls:
                raise ValueError(f"{', '.join(nulls)} cannot be null; leave the field out instead")
        return data


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

    @classmethod
    def from_row(cls, row: Any) -> UserOut:
        return cls(
            id=row.id,
            email=row.email,
            name=row.name,
            email_verified=row.email_verified_at is not None,
            email_verified_at=row.email_verified_at,
            version=row.version,
            created_at=row.created_at,
            updated_at=row.updated_at,
        )


class Health(BaseModel):
    status: str
