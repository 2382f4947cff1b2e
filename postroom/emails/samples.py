"""Every email of the catalogue rendered with sample events: what `postroom templates check`
and the notifier's start-up run, what `templates preview` and the dev inbox's Templates page
show."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from postroom.emails.catalogue import RECIPIENTS, EmailSpec
from postroom.emails.rendering import Emails, RenderedEmail, TemplateProblem
from postroom.events import USER_EVENTS, EventData

SAMPLE_TIME = datetime(2026, 1, 15, 9, 30, tzinfo=UTC)
SAMPLE_VERIFY_URL = "/verify-email?token=sample-token-not-valid"
_SAMPLE_FIELDS: dict[str, Any] = {
    "user_id": uuid.UUID("00000000-0000-4000-8000-000000000001"),
    "version": 2,
    "email": "ada@example.com",
    "name": "Ada Lovelace",
    "old_email": "ada.lovelace@example.org",
    "new_email": "ada@example.com",
    "changed": ["name"],
    "locale": None,
}
_MODELS: dict[str, type[EventData]] = {model.event_type: model for model in USER_EVENTS}


def sample_event(event_type: str) -> dict[str, Any]:
    """The data of a made-up event of `event_type`, as the notifier reads it from Kafka."""
    model = _MODELS[event_type]
    values = {
        name: SAMPLE_TIME if name.endswith("_at") else _SAMPLE_FIELDS[name]
        for name in model.model_fields
    }
    return model.model_validate(values).model_dump(mode="json")


def email_context(event_type: str, data: dict[str, Any], spec: EmailSpec) -> dict[str, Any]:
    """What a template of `spec` is given for an event: the event's fields, and `email`, the
    address it goes to (the brand, `locale` and `verify_url` are added when it is rendered)."""
    field = RECIPIENTS[event_type][spec.to]
    return {**data, "email": data[field]}


def sample_context(emails: Emails, event_type: str, spec: EmailSpec) -> dict[str, Any]:
    context = email_context(event_type, sample_event(event_type), spec)
    if spec.verification_link:
        context["verify_url"] = emails.brand.base_url.rstrip("/") + SAMPLE_VERIFY_URL
    return context


@dataclass(frozen=True, slots=True)
class Preview:
    event_type: str
    spec: EmailSpec
    locale: str
    rendered: RenderedEmail | None  # None for a Postmark template: Postmark renders it
    model: dict[str, Any]  # the variables (Postmark's TemplateModel)


def preview(emails: Emails, name: str, locale: str | None = None) -> Preview:
    """Email `name` rendered with sample data in `locale` (default: the default locale);
    KeyError if the catalogue has no such email, TemplateProblem if it cannot be rendered."""
    found = emails.catalogue.named(name)
    if found is None:
        raise KeyError(name)
    event_type, spec = found
    context = sample_context(emails, event_type, spec)
    if spec.postmark_template:
        used = emails.postmark_locale(spec, locale)
        return Preview(event_type, spec, used, None, emails.variables(context, used))
    rendered = emails.render(spec.template_name, locale, context)
    return Preview(
        event_type, spec, rendered.locale, rendered, emails.variables(context, rendered.locale)
    )


def check(emails: Emails) -> list[str]:
    """Every problem with the emails in effect, one line each: an email that cannot be
    rendered in one of the catalogue's locales or of the team folder's (a missing template
    or variable, a broken template), or that has no template in the language of a locale
    the catalogue promises (it would go out in another)."""
    problems: list[str] = []
    promised = emails.locales()
    # A locale folder of the team's that the catalogue does not promise is still used for
    # its users: what is in it must render, though it need not hold every email.
    locales = promised + [tag for tag in emails.team_locales() if tag not in promised]
    for event_type, spec in emails.catalogue.all():
        if spec.postmark_template:
            continue  # rendered by Postmark: `templates check --postmark` asks it
        for locale in locales:
            try:
                rendered = emails.render(
                    spec.template_name, locale, sample_context(emails, event_type, spec)
                )
            except TemplateProblem as exc:
                problems.append(f"{spec.name} ({event_type}, {locale}): {exc}")
                continue
            if locale in promised and rendered.locale.split("-")[0] != locale.split("-")[0]:
                problems.append(
                    f"{spec.name} ({event_type}, {locale}): no {locale}/"
                    f"{spec.template_name}.{{subject.txt,html,txt}}: it would go out in "
                    f"{rendered.locale}"
                )
    return problems
