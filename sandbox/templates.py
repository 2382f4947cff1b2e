"""Postmark's templates, as far as Postroom uses them: templates kept by id and alias (the
`/templates` API), and a template message turned into the plain message Postmark would send
(`/email/withTemplate`, `/email/batchWithTemplates`).

Postmark renders templates with Mustachio, a Mustache dialect; the sandbox uses pystache:
`{{var}}` is HTML-escaped in the HTML part only, `{{{var}}}` is never escaped, sections and
dotted names work, a missing variable renders empty (as Postmark's does)."""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

import pystache  # type: ignore[import-untyped]
from pystache.parser import ParsingError  # type: ignore[import-untyped]

from sandbox.messages import PostmarkError, invalid

# Postmark's codes for the template API, as the sandbox answers them.
TEMPLATE_NOT_FOUND = 1101
ALIAS_TAKEN = 1122  # "a template with this alias already exists"
MAX_TEMPLATE_PAGE = 500

_HTML = pystache.Renderer(missing_tags="ignore")
_PLAIN = pystache.Renderer(missing_tags="ignore", escape=lambda text: text)


@dataclass
class Template:
    template_id: int
    name: str
    alias: str | None
    subject: str
    html_body: str | None
    text_body: str | None
    template_type: str = "Standard"
    active: bool = True

    def summary_json(self) -> dict[str, Any]:
        """One entry of `GET /templates`."""
        return {
            "Active": self.active,
            "TemplateId": self.template_id,
            "Name": self.name,
            "Alias": self.alias,
            "TemplateType": self.template_type,
            "LayoutTemplate": None,
        }

    def json(self, server_id: int = 1) -> dict[str, Any]:
        """`GET /templates/{idOrAlias}`."""
        return {
            **self.summary_json(),
            "Subject": self.subject,
            "HtmlBody": self.html_body,
            "TextBody": self.text_body,
            "AssociatedServerId": server_id,
        }


def not_found(id_or_alias: object) -> PostmarkError:
    return PostmarkError(422, TEMPLATE_NOT_FOUND, f"The template '{id_or_alias}' was not found.")


def _text(data: dict[str, Any], key: str, *, required: bool = False) -> str | None:
    value = data.get(key)
    if value is None:
        if required:
            raise invalid(f"The '{key}' field is required.")
        return None
    if not isinstance(value, str):
        raise invalid(f"The '{key}' field must be a string.")
    return value


class Templates:
    """The server's templates, in memory."""

    def __init__(self) -> None:
        self._by_id: dict[int, Template] = {}
        self._ids = itertools.count(1_000_001)

    def create(self, data: object) -> Template:
        if not isinstance(data, dict):
            raise PostmarkError(422, 403, "The request body must be a JSON object.")
        name = _text(data, "Name", required=True)
        alias = _text(data, "Alias") or None
        subject = _text(data, "Subject", required=True)
        html, text = _text(data, "HtmlBody"), _text(data, "TextBody")
        if alias is not None and self._by_alias(alias) is not None:
            raise PostmarkError(422, ALIAS_TAKEN, f"A template with the alias '{alias}' exists.")
        template = Template(next(self._ids), name or "", alias, subject or "", html, text)
        self._check(template)
        self._by_id[template.template_id] = template
        return template

    def get(self, id_or_alias: str | int) -> Template:
        key = str(id_or_alias)
        # An id is ASCII digits that fit an id ("²" is a digit to Python, not to int()).
        numeric = key.isascii() and key.isdigit() and len(key) <= 18
        found = self._by_id.get(int(key)) if numeric else self._by_alias(key)
        if found is None:
            raise not_found(id_or_alias)
        return found

    def update(self, id_or_alias: str, data: object) -> Template:
        template = self.get(id_or_alias)
        if not isinstance(data, dict):
            raise PostmarkError(422, 403, "The request body must be a JSON object.")
        alias = _text(data, "Alias")
        if alias and alias != template.alias and self._by_alias(alias) is not None:
            raise PostmarkError(422, ALIAS_TAKEN, f"A template with the alias '{alias}' exists.")
        changed = Template(
            template.template_id,
            _text(data, "Name") or template.name,
            alias or template.alias,
            _text(data, "Subject") or template.subject,
            # A field left out or null stays as it was (postmarker sends null for those).
            _text(data, "HtmlBody") if data.get("HtmlBody") is not None else template.html_body,
            _text(data, "TextBody") if data.get("TextBody") is not None else template.text_body,
        )
        self._check(changed)
        self._by_id[template.template_id] = changed
        return changed

    def delete(self, id_or_alias: str) -> Template:
        template = self.get(id_or_alias)
        del self._by_id[template.template_id]
        return template

    def page(self, count: int, offset: int) -> tuple[int, list[Template]]:
        every = sorted(self._by_id.values(), key=lambda t: t.template_id)
        return len(every), every[offset : offset + count]

    def _by_alias(self, alias: str) -> Template | None:
        return next((t for t in self._by_id.values() if t.alias == alias), None)

    @staticmethod
    def _check(template: Template) -> None:
        """Refuse, on create and on edit alike, a template no message could be sent from: one
        without a body, or one that does not parse (so a send never meets a broken one)."""
        if not template.html_body and not template.text_body:
            raise invalid("Provide either a TextBody or an HtmlBody or both.")
        for part in (template.subject, template.html_body, template.text_body):
            try:
                pystache.parse(part or "")
            except ParsingError as exc:
                raise invalid(f"The template does not parse: {exc}") from None

    def render_message(self, data: object) -> tuple[dict[str, Any], str]:
        """The plain message a template message stands for (the template's parts rendered with
        its `TemplateModel`, the other fields as given), and the template it came from: its
        alias, or its id when it has none, for the capture to show."""
        if not isinstance(data, dict):
            raise PostmarkError(422, 403, "Each message must be a JSON object.")
        alias, template_id = data.get("TemplateAlias"), data.get("TemplateId")
        if not alias and template_id is None:
            raise invalid("Provide a 'TemplateAlias' or a 'TemplateId'.")
        model = data.get("TemplateModel")
        if not isinstance(model, dict):
            raise invalid("The 'TemplateModel' field must be a JSON object.")
        template = self.get(str(alias) if alias else str(template_id))
        try:
            rendered = {
                "Subject": _PLAIN.render(template.subject, model),
                "HtmlBody": _HTML.render(template.html_body, model) if template.html_body else None,
                "TextBody": _PLAIN.render(template.text_body, model)
                if template.text_body
                else None,
            }
        except (ParsingError, ValueError, TypeError, KeyError) as exc:
            raise invalid(f"The template could not be rendered: {exc}") from None
        plain = {
            key: value
            for key, value in data.items()
            if key not in ("TemplateAlias", "TemplateId", "TemplateModel", "InlineCss")
        }
        return {**plain, **rendered}, template.alias or str(template.template_id)
