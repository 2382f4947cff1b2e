"""The emails in effect: the catalogue, the templates (a team's folder over the built-ins),
the brand, and the locale each email is written in.

Templates are Jinja2 files named `<locale>/<template>.subject.txt`, `.html` and `.txt`; the
HTML part is autoescaped, and every variable must exist (StrictUndefined), so a misspelt one
fails `postroom templates check` and the notifier's start instead of leaving a blank in a
sent email. A locale is looked up as RFC 4647 does (de-AT, de, then the default locale)."""

from __future__ import annotations

import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jinja2 import (
    ChoiceLoader,
    Environment,
    FileSystemLoader,
    PackageLoader,
    StrictUndefined,
    Template,
    TemplateError,
    TemplateNotFound,
    select_autoescape,
)

from postroom.emails.catalogue import (
    BUILT_IN,
    CATALOGUE_FILE,
    Catalogue,
    CatalogueError,
    EmailSpec,
    read_catalogue,
)
from postroom.locales import InvalidLocale, canonical_locale, lookup_chain

PARTS = ("subject.txt", "html", "txt")
LAYOUT = "layout.html"
MAX_SUBJECT = 2000


@dataclass(frozen=True, slots=True)
class Brand:
    """What every built-in template says about the product."""

    name: str = "Postroom"
    support_email: str = ""
    base_url: str = "http://127.0.0.1:8000"

    def variables(self) -> dict[str, str]:
        return {
            "product": self.name,
            "support_email": self.support_email,
            "base_url": self.base_url.rstrip("/"),
        }


@dataclass(frozen=True, slots=True)
class RenderedEmail:
    subject: str
    html: str
    text: str
    locale: str  # the locale whose templates were used


class TemplateProblem(ValueError):
    """An email cannot be rendered: a template or a variable is missing, or a template is
    broken. One line."""


class Emails:
    """The catalogue and the templates, loaded and checked once per process."""

    def __init__(
        self,
        catalogue: Catalogue,
        *,
        templates_dir: Path | None = None,
        brand: Brand | None = None,
        default_locale: str = "en",
    ) -> None:
        self.catalogue = catalogue
        self.templates_dir = templates_dir
        self.brand = brand or Brand()
        self.default_locale = canonical_locale(default_locale)
        loaders: list[Any] = [PackageLoader("postroom.emails", "templates")]
        if templates_dir is not None:
            loaders.insert(0, FileSystemLoader(str(templates_dir)))
        self._env = Environment(
            loader=ChoiceLoader(loaders),
            autoescape=select_autoescape(enabled_extensions=("html",), default=False),
            undefined=StrictUndefined,
            keep_trailing_newline=True,
            # The files do not change while the process runs: checking them on every render
            # cost a sixth of the notifier's busy time in the throughput benchmark.
            auto_reload=False,
        )
        self._chosen: dict[tuple[str, str | None], tuple[str, list[Template], Template]] = {}

    @classmethod
    def load(
        cls,
        templates_dir: Path | None = None,
        *,
        brand: Brand | None = None,
        default_locale: str = "en",
    ) -> Emails:
        """The team's catalogue (`emails.yaml` in `templates_dir`) or the built-in one;
        CatalogueError in one line when the folder or the catalogue cannot be used."""
        if templates_dir is not None and not templates_dir.is_dir():
            raise CatalogueError(f"NOTIFIER_TEMPLATES_DIR {templates_dir} is not a folder")
        path = BUILT_IN
        if templates_dir is not None and (templates_dir / CATALOGUE_FILE).exists():
            path = templates_dir / CATALOGUE_FILE
        try:
            return cls(
                read_catalogue(path),
                templates_dir=templates_dir,
                brand=brand,
                default_locale=default_locale,
            )
        except InvalidLocale as exc:
            raise CatalogueError(f"DEFAULT_LOCALE: {exc}") from None

    # -- what a template is given ----------------------------------------------------------

    def variables(self, context: dict[str, Any], locale: str) -> dict[str, Any]:
        """A template's variables: the email's context, the brand, and the locale used."""
        return {**self.brand.variables(), **context, "locale": locale}

    def postmark_alias(self, spec: EmailSpec, locale: str | None) -> str:
        """The Postmark template alias for `spec` in `locale`."""
        assert spec.postmark_template is not None
        for candidate in lookup_chain(locale, self.default_locale):
            if candidate in spec.postmark_template_locales:
                return spec.postmark_template_locales[candidate]
        return spec.postmark_template

    def postmark_locale(self, spec: EmailSpec, locale: str | None) -> str:
        for candidate in lookup_chain(locale, self.default_locale):
            if candidate in spec.postmark_template_locales:
                return candidate
        return self.default_locale

    # -- local templates -----------------------------------------------------------------

    def render(self, template: str, locale: str | None, context: dict[str, Any]) -> RenderedEmail:
        """The subject, HTML and text of local template `template` in the user's `locale`
        (or the nearest one there is); TemplateProblem when it cannot be rendered."""
        used, (subject_t, html_t, text_t), layout = self._templates(template, locale)
        values = self.variables(context, used)
        try:
            subject = " ".join(subject_t.render(values).split())
            values["subject"] = subject
            html = html_t.render(values, layout=layout)
            text = text_t.render(values)
        except Exception as exc:  # a template's own expression may raise anything
            raise TemplateProblem(_describe(template, used, exc)) from None
        if not subject:
            raise TemplateProblem(f"{used}/{template}.subject.txt: renders an empty subject")
        if not html.strip() and not text.strip():
            raise TemplateProblem(f"{used}/{template}: both the HTML and the text part are empty")
        if len(subject) > MAX_SUBJECT:
            raise TemplateProblem(f"{used}/{template}.subject.txt: longer than {MAX_SUBJECT}")
        return RenderedEmail(subject=subject, html=html, text=text, locale=used)

    def _templates(self, template: str, locale: str | None) -> tuple[str, list[Template], Template]:
        """The first locale of the lookup chain that has all three parts of `template`, its
        three templates and that locale's layout; cached."""
        # Keyed by the canonical tag: an event's locale is anyone's string (a huge one must
        # not be kept, and `de-at` is `de-AT`); one that is no tag is the default's.
        try:
            tag = canonical_locale(locale) if locale else None
        except InvalidLocale:
            tag = None
        key = (template, tag)
        chosen = self._chosen.get(key)
        if chosen is None:
            chosen = self._choose(template, tag)
            if len(self._chosen) < 10_000:
                self._chosen[key] = chosen
        return chosen

    def _choose(self, template: str, locale: str | None) -> tuple[str, list[Template], Template]:
        chain = lookup_chain(locale, self.default_locale)
        for candidate in chain:
            try:
                parts = [self._env.get_template(f"{candidate}/{template}.{part}") for part in PARTS]
            except TemplateNotFound:
                continue
            except TemplateError as exc:
                raise TemplateProblem(_describe(template, candidate, exc)) from None
            return candidate, parts, self._layout(chain)
        raise TemplateProblem(
            f"no template {template!r}: none of "
            + ", ".join(f"{c}/{template}.{{subject.txt,html,txt}}" for c in chain)
        )

    def _layout(self, chain: list[str]) -> Template:
        names = [f"{candidate}/{LAYOUT}" for candidate in chain] + [LAYOUT]
        try:
            return self._env.select_template(names)
        except TemplateNotFound:
            raise TemplateProblem(f"no {LAYOUT} in any of {', '.join(chain)}") from None
        except TemplateError as exc:
            raise TemplateProblem(_describe(LAYOUT, chain[0], exc)) from None

    def locales(self) -> list[str]:
        """The locales every email must have templates in: the default, then the
        catalogue's `locales`."""
        return list(dict.fromkeys([self.default_locale, *self.catalogue.locales]))

    def team_locales(self) -> list[str]:
        """The locale folders of the team's templates folder (named by a canonical tag)."""
        if self.templates_dir is None:
            return []
        found = []
        for folder in sorted(self.templates_dir.iterdir()):
            try:
                if folder.is_dir() and canonical_locale(folder.name) == folder.name:
                    found.append(folder.name)
            except InvalidLocale:
                continue
        return found


def _describe(template: str, locale: str, exc: BaseException) -> str:
    """One line: the template file and line at fault (a syntax error names them; an error
    while rendering, such as an undefined variable, is found in Jinja's traceback, whose
    frames are the templates' own lines), then what is wrong."""
    where = getattr(exc, "name", None) or f"{locale}/{template}"
    line = getattr(exc, "lineno", None)
    if line is None:
        for frame in reversed(traceback.extract_tb(exc.__traceback__)):
            if frame.filename.endswith((".html", ".txt")):
                path = Path(frame.filename)
                where, line = f"{path.parent.name}/{path.name}", frame.lineno
                break
    what = exc.message if isinstance(exc, TemplateError) else f"{type(exc).__name__}: {exc}"
    return f"{where}{f' line {line}' if line else ''}: {what or type(exc).__name__}"
