"""The emails catalogue: which emails each user event asks for, to whom, on which Postmark
message stream, with which tag and metadata, from a local template or a Postmark template.

It is a YAML file (`emails.yaml`): the built-in one beside this module, or a team's in its
templates folder (NOTIFIER_TEMPLATES_DIR), which then replaces the built-in one whole. The
models below validate it and publish its JSON Schema (`postroom templates schema`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from postroom.events import USER_EVENTS
from postroom.locales import InvalidLocale, canonical_locale

CATALOGUE_FILE = "emails.yaml"
BUILT_IN = Path(__file__).with_name(CATALOGUE_FILE)
# Metadata every message carries (send-once searches by notification_id); a catalogue's own
# metadata may not take these names, and Postmark keeps at most 10 fields per message.
RESERVED_METADATA = frozenset({"notification_id", "event_id", "user_id", "attempt_id"})
MAX_METADATA_FIELDS = 10 - len(RESERVED_METADATA)
# The event of `POST /v1/users/{id}/verification-emails`: its email carries the new link.
RESEND_EVENT = "user.verification_requested"
# Event type -> recipient role -> the field of its data holding that address.
RECIPIENTS: dict[str, dict[str, str]] = {
    model.event_type: dict(model.recipients)  # type: ignore[attr-defined]
    for model in USER_EVENTS
}

EmailName = Annotated[
    str,
    Field(
        pattern=r"^[a-z][a-z0-9_]{0,39}$",
        description="Names the email: its templates' file names, its notification ids and "
        "its default tag. Renaming an email gives its pending notifications new ids.",
        examples=["welcome"],
    ),
]
TemplateName = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]{0,39}$")]
Alias = Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]{1,255}$")]
MetadataName = Annotated[str, Field(min_length=1, max_length=20)]
MetadataValue = Annotated[str, Field(max_length=80)]


class CatalogueError(ValueError):
    """The catalogue cannot be used; the message is one line naming what is wrong."""


class EmailSpec(BaseModel):
    """One email an event asks for."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: EmailName
    to: str = Field(
        default="user",
        description="`user`: the user's address after the event (the new one on "
        "user.email_changed); `old_address`: the address a user.email_changed left.",
    )
    template: TemplateName | None = Field(
        default=None,
        description="The local template's name (files <locale>/<template>.subject.txt, "
        ".html and .txt); the email's name when not given.",
    )
    postmark_template: Alias | None = Field(
        default=None,
        description="Send with this Postmark template alias instead of a local template.",
    )
    postmark_template_locales: dict[str, Alias] = Field(
        default_factory=dict,
        description="Postmark template aliases per locale (`de: welcome-de`), looked up "
        "like local templates (de-AT, de, then the default locale); `postmark_template` "
        "when none matches.",
    )
    stream: Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{1,100}$")] | None = Field(
        default=None, description="The Postmark message stream; POSTMARK_MESSAGE_STREAM if not."
    )
    tag: Annotated[str, Field(min_length=1, max_length=1000)] | None = Field(
        default=None, description="Postmark's Tag; the email's name when not given."
    )
    metadata: dict[MetadataName, MetadataValue] = Field(
        default_factory=dict,
        description=f"Extra Postmark Metadata, at most {MAX_METADATA_FIELDS} fields; "
        f"{', '.join(sorted(RESERVED_METADATA))} are Postroom's own.",
    )
    verification_link: bool = Field(
        default=False,
        description="Give the template `verify_url`: a link that verifies the user's address.",
    )

    @property
    def template_name(self) -> str:
        return self.template or self.name

    @property
    def tag_or_name(self) -> str:
        return self.tag or self.name

    @model_validator(mode="after")
    def _consistent(self) -> EmailSpec:
        if self.postmark_template and self.template:
            raise ValueError("give `template` or `postmark_template`, not both")
        if self.postmark_template_locales and not self.postmark_template:
            raise ValueError("`postmark_template_locales` needs a `postmark_template` too")
        for locale in self.postmark_template_locales:
            try:
                if canonical_locale(locale) != locale:
                    raise ValueError(f"write locale {locale!r} as {canonical_locale(locale)!r}")
            except InvalidLocale as exc:
                raise ValueError(str(exc)) from None
        reserved = sorted(RESERVED_METADATA & {name.lower() for name in self.metadata})
        if reserved:
            raise ValueError(f"metadata field {reserved[0]!r} is Postroom's own")
        if len(self.metadata) > MAX_METADATA_FIELDS:
            raise ValueError(f"at most {MAX_METADATA_FIELDS} metadata fields")
        if self.verification_link and self.to != "user":
            raise ValueError("a verification link verifies the user's address: `to` must be user")
        return self


class Catalogue(BaseModel):
    """Event type -> the emails it asks for. Event types not listed send nothing."""

    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        json_schema_extra={"$id": "urn:postroom:emails-catalogue", "title": "emails.yaml"},
    )

    locales: list[str] = Field(
        default_factory=list,
        description="The locales every email has templates in, besides DEFAULT_LOCALE: "
        "`postroom templates check` fails when one lacks any (an email in a locale not "
        "listed falls back to the nearest one there is, down to DEFAULT_LOCALE).",
        examples=[["de", "fr"]],
    )
    emails: dict[str, list[EmailSpec]]

    @model_validator(mode="after")
    def _canonical_locales(self) -> Catalogue:
        for locale in self.locales:
            try:
                canonical = canonical_locale(locale)
            except InvalidLocale as exc:
                raise ValueError(f"locales: {exc}") from None
            if canonical != locale:
                raise ValueError(f"locales: write {locale!r} as {canonical!r}")
        return self

    @model_validator(mode="after")
    def _known_events_and_recipients(self) -> Catalogue:
        names: set[str] = set()  # an email's name is its identity (ids, tags, previews)
        for event_type, specs in self.emails.items():
            roles = RECIPIENTS.get(event_type)
            if roles is None:
                known = ", ".join(sorted(RECIPIENTS))
                raise ValueError(f"{event_type!r} is not a user event type (one of {known})")
            for spec in specs:
                if spec.to not in roles:
                    raise ValueError(
                        f"{event_type} {spec.name}: `to: {spec.to}` is not one of "
                        f"{', '.join(sorted(roles))}"
                    )
                if spec.name in names:
                    raise ValueError(f"two emails named {spec.name!r}: a name is one email")
                names.add(spec.name)
        return self

    @model_validator(mode="after")
    def _a_new_link_is_sent_when_asked_for(self) -> Catalogue:
        """The api answers "a new link is on its way" to a resend request: the catalogue
        must send one."""
        if not any(spec.verification_link for spec in self.specs(RESEND_EVENT)):
            raise ValueError(
                f"{RESEND_EVENT} needs an email with `verification_link: true` (the api "
                "promises a new link to whoever asks for one)"
            )
        return self

    def specs(self, event_type: str) -> list[EmailSpec]:
        return self.emails.get(event_type, [])

    def all(self) -> list[tuple[str, EmailSpec]]:
        return [(event_type, spec) for event_type, specs in self.emails.items() for spec in specs]

    def named(self, name: str) -> tuple[str, EmailSpec] | None:
        return next(((t, spec) for t, spec in self.all() if spec.name == name), None)


def read_catalogue(path: Path) -> Catalogue:
    """The catalogue in `path`, or CatalogueError in one line (file, place and reason)."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise CatalogueError(f"{path}: cannot read it: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or "not YAML"
        raise CatalogueError(f"{path}{where}: {problem}") from None
    try:
        return Catalogue.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "top level"
        message = str(first["msg"]).removeprefix("Value error, ")
        raise CatalogueError(f"{path}: {where}: {message}") from None


def catalogue_schema() -> dict[str, Any]:
    """The JSON Schema (2020-12) a catalogue file is validated against."""
    schema = Catalogue.model_json_schema()
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", **schema}


def catalogue_schema_json() -> str:
    return json.dumps(catalogue_schema(), indent=2, sort_keys=True) + "\n"
