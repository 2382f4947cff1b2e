"""Email templates: Jinja2 with autoescaping for the HTML part, a text part and a subject
per template, links built from PUBLIC_BASE_URL."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

SUBJECTS = {
    "welcome": "Welcome to {product}: please verify your email",
    "email_change_notice": "Your {product} email address was changed",
    "verify_new_email": "Please verify your new {product} email address",
    "goodbye": "Your {product} account was deleted",
}
PRODUCT = "Postroom"


@dataclass(frozen=True, slots=True)
class RenderedEmail:
    subject: str
    html: str
    text: str


class Renderer:
    def __init__(self) -> None:
        self._env = Environment(
            loader=PackageLoader("notifier", "templates"),
            autoescape=select_autoescape(enabled_extensions=("html",), default=False),
            undefined=StrictUndefined,
            keep_trailing_newline=True,
            # Templates ship with the code: checking their files on every render cost a sixth
            # of the notifier's busy time in the throughput benchmark.
            auto_reload=False,
        )

    def render(self, template: str, context: dict[str, Any]) -> RenderedEmail:
        values = {"product": PRODUCT, **context}
        subject = SUBJECTS[template].format(product=PRODUCT)
        return RenderedEmail(
            subject=subject,
            html=self._env.get_template(f"{template}.html").render(subject=subject, **values),
            text=self._env.get_template(f"{template}.txt").render(subject=subject, **values),
        )
