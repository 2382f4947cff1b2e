"""The emails catalogue, the templates over the built-ins, locales, and the checks a team's CI
and the notifier's start run."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from postroom.emails import Brand, CatalogueError, Emails, TemplateProblem
from postroom.emails.catalogue import BUILT_IN, catalogue_schema
from postroom.emails.samples import check, preview, sample_context
from postroom.locales import InvalidLocale, canonical_locale, lookup_chain
from postroom_cli.main import app

TEAM = Path(__file__).parents[1] / "fixtures" / "team_emails"


@pytest.fixture
def team(tmp_path: Path) -> Path:
    """A copy of the team's folder to spoil."""
    folder = tmp_path / "emails"
    shutil.copytree(TEAM, folder)
    return folder


# The resend route's email, which every catalogue must have.
RESEND = {"user.verification_requested": [{"name": "verify_email", "verification_link": True}]}


def write_catalogue(folder: Path, data: object) -> None:
    (folder / "emails.yaml").write_text(yaml.safe_dump(data), encoding="utf-8")


# -- locales ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("tag", "canonical"),
    [
        ("de-at", "de-AT"),
        ("EN", "en"),
        ("zh-hant-tw", "zh-Hant-TW"),
        ("iw", "he"),  # the registry's current code
        ("xx-yy", "xx-YY"),  # well formed, registered or not: its emails use DEFAULT_LOCALE
        ("de-AT-X-Vienna", "de-AT-x-vienna"),
    ],
)
def test_a_locale_is_kept_in_one_form(tag: str, canonical: str) -> None:
    assert canonical_locale(tag) == canonical


@pytest.mark.parametrize(
    "tag", ["", "de_AT", "english", "en US", "de--AT", "a" * 36, "0000", "en\n", "de-AT\n"]
)
def test_a_locale_that_is_no_language_tag_is_refused(tag: str) -> None:
    with pytest.raises(InvalidLocale):
        canonical_locale(tag)


def test_lookup_goes_from_specific_to_general_then_to_the_default() -> None:
    assert lookup_chain("de-AT", "en") == ["de-AT", "de", "en"]
    assert lookup_chain("zh-Hant-TW", "en-GB") == ["zh-Hant-TW", "zh-Hant", "zh", "en-GB", "en"]
    assert lookup_chain("de-AT-x-vienna", "en") == ["de-AT-x-vienna", "de-AT", "de", "en"]
    assert lookup_chain(None, "fr") == ["fr"]
    assert lookup_chain("not a tag", "en") == ["en"]
    assert lookup_chain("../../etc", "en") == ["en"]


# -- the built-in emails -------------------------------------------------------------------


def test_every_built_in_email_renders_in_every_built_in_locale() -> None:
    emails = Emails.load()
    assert emails.locales() == ["en", "de", "fr", "es"]
    assert check(emails) == []
    names = {spec.name for _, spec in emails.catalogue.all()}
    assert names == {
        "welcome",
        "email_change_notice",
        "verify_new_email",
        "verify_email",
        "goodbye",
    }


@pytest.mark.parametrize(
    ("locale", "used", "words"),
    [
        (None, "en", "Welcome to Acme"),
        ("de-AT", "de", "Willkommen bei Acme"),
        ("fr-CA", "fr", "Bienvenue sur Acme"),
        ("es-MX", "es", "Te damos la bienvenida a Acme"),
        ("pt-BR", "en", "Welcome to Acme"),  # no Portuguese: the default locale
    ],
)
def test_an_email_is_written_in_the_nearest_locale_there_is(
    locale: str | None, used: str, words: str
) -> None:
    emails = Emails.load(brand=Brand("Acme", "help@acme.test"))
    shown = preview(emails, "welcome", locale)
    assert shown.rendered is not None
    assert shown.locale == used
    assert words in shown.rendered.subject
    assert f'<html lang="{used}">' in shown.rendered.html
    assert "help@acme.test" in shown.rendered.html
    assert "help@acme.test" in shown.rendered.text
    assert "Postroom" not in shown.rendered.html + shown.rendered.text + shown.rendered.subject


def test_the_html_part_escapes_what_the_user_wrote_and_the_text_part_keeps_it() -> None:
    emails = Emails.load()
    context = {"name": "<b>Ada</b> & co", "email": "ada@example.com", "verify_url": "https://x/"}
    rendered = emails.render("welcome", "en", context)
    assert "&lt;b&gt;Ada&lt;/b&gt; &amp; co" in rendered.html
    assert "<b>Ada</b> & co" in rendered.text


# -- a team's folder -----------------------------------------------------------------------


def test_a_team_folder_overrides_one_file_and_adds_an_email() -> None:
    emails = Emails.load(TEAM, brand=Brand("Acme"))
    assert check(emails) == []
    welcome = preview(emails, "welcome", "de")
    assert welcome.rendered is not None
    assert welcome.rendered.subject == "Ada Lovelace, willkommen bei Acme"
    # Only the subject was theirs: the body is the built-in German one.
    assert "Danke für Ihre Anmeldung" in welcome.rendered.html
    notice = preview(emails, "security_notice", "en")
    assert notice.rendered is not None
    assert notice.event_type == "user.email_changed"
    assert (notice.spec.to, notice.spec.stream, notice.spec.tag) == (
        "old_address",
        "security",
        "security",
    )
    assert "ada@example.com" in notice.rendered.text  # the new address, told to the old one


def test_a_misspelt_variable_is_a_problem_naming_file_and_line(team: Path) -> None:
    (team / "de" / "security_notice.txt").write_text("Hallo {{ nmae }}\n", encoding="utf-8")
    problems = check(Emails.load(team))
    assert problems == [
        "security_notice (user.email_changed, de): de/security_notice.txt line 1: "
        "'nmae' is undefined"
    ]


def test_an_email_missing_in_a_promised_locale_is_a_problem(team: Path) -> None:
    (team / "de" / "security_notice.html").unlink()
    problems = check(Emails.load(team))
    assert len(problems) == 1
    assert problems[0].startswith("security_notice (user.email_changed, de): no de/security_notice")
    assert "it would go out in en" in problems[0]


def test_an_email_with_no_template_at_all_is_a_problem(team: Path) -> None:
    for path in team.glob("*/security_notice.*"):
        path.unlink()
    problems = check(Emails.load(team))
    assert len(problems) == 2  # en and de
    assert all("no template 'security_notice'" in problem for problem in problems)


def test_a_broken_template_is_a_problem_not_a_crash(team: Path) -> None:
    (team / "en" / "security_notice.html").write_text("{% if %}", encoding="utf-8")
    [problem] = check(Emails.load(team))
    assert problem.startswith("security_notice (user.email_changed, en): en/security_notice.html")


@pytest.mark.parametrize(
    ("catalogue", "says"),
    [
        ({"emails": {"user.teleported": []}}, "'user.teleported' is not a user event type"),
        (
            {"emails": {"user.registered": [{"name": "welcome", "to": "old_address"}]}},
            "`to: old_address` is not one of user",
        ),
        (
            {
                "emails": {
                    "user.email_changed": [
                        {"name": "x", "to": "old_address", "verification_link": True}
                    ]
                }
            },
            "a verification link verifies the user's address",
        ),
        (
            {"emails": {"user.registered": [{"name": "w", "metadata": {"notification_id": "1"}}]}},
            "metadata field 'notification_id' is Postroom's own",
        ),
        (
            {"emails": {"user.registered": [{"name": "w"}, {"name": "w"}]}},
            "two emails named 'w'",
        ),
        (
            {"emails": {"user.registered": [{"name": "w"}], "user.deleted": [{"name": "w"}]}},
            "two emails named 'w'",
        ),
        ({"emails": {"user.registered": [{"name": "w"}]}}, "needs an email with `verification"),
        (
            {"emails": {"user.verification_requested": [{"name": "goodbye"}]}},
            "needs an email with `verification_link: true`",
        ),
        ({"emails": {"user.registered": [{"name": "Welcome!"}]}}, "should match pattern"),
        ({"emails": {"user.registered": [{"name": "w", "colour": "red"}]}}, "colour"),
        ({"locales": ["de-at"], "emails": {}}, "write 'de-at' as 'de-AT'"),
        ({"locales": ["de_AT"], "emails": {}}, "'de_AT' is not a BCP 47 language tag"),
        (
            {
                "emails": {
                    "user.registered": [{"name": "w", "template": "w", "postmark_template": "p"}]
                }
            },
            "not both",
        ),
    ],
)
def test_a_catalogue_that_cannot_be_used_is_refused_in_one_line(
    tmp_path: Path, catalogue: object, says: str
) -> None:
    write_catalogue(tmp_path, catalogue)
    with pytest.raises(CatalogueError) as refused:
        Emails.load(tmp_path)
    message = str(refused.value)
    assert "\n" not in message
    assert message.startswith(f"{tmp_path / 'emails.yaml'}: ")
    assert says in message


def test_a_catalogue_that_is_not_yaml_names_the_line(tmp_path: Path) -> None:
    (tmp_path / "emails.yaml").write_text("emails:\n  user.registered: [\n", encoding="utf-8")
    with pytest.raises(CatalogueError, match=r"emails.yaml line \d+"):
        Emails.load(tmp_path)


def test_a_templates_dir_that_is_not_a_folder_is_refused(tmp_path: Path) -> None:
    with pytest.raises(CatalogueError, match="is not a folder"):
        Emails.load(tmp_path / "missing")


def test_the_built_in_catalogue_validates_against_the_published_schema() -> None:
    import jsonschema_rs

    validator = jsonschema_rs.validator_for(catalogue_schema())
    validator.validate(yaml.safe_load(BUILT_IN.read_text()))
    validator.validate(yaml.safe_load((TEAM / "emails.yaml").read_text()))
    assert not validator.is_valid({"emails": {"user.registered": [{"name": 1}]}})


def test_postmark_templates_are_chosen_per_locale(tmp_path: Path) -> None:
    write_catalogue(
        tmp_path,
        {
            "emails": {
                "user.registered": [
                    {
                        "name": "welcome",
                        "verification_link": True,
                        "postmark_template": "welcome-en",
                        "postmark_template_locales": {"de": "welcome-de"},
                    }
                ],
                **RESEND,
            }
        },
    )
    emails = Emails.load(tmp_path, brand=Brand("Acme"))
    event_type, spec = emails.catalogue.all()[0]
    assert emails.postmark_alias(spec, "de-CH") == "welcome-de"
    assert emails.postmark_alias(spec, "fr") == "welcome-en"
    assert emails.postmark_alias(spec, None) == "welcome-en"
    shown = preview(emails, "welcome", "de-CH")
    assert shown.rendered is None  # Postmark renders it
    assert shown.locale == "de"
    assert shown.model["product"] == "Acme"
    assert shown.model["verify_url"] == sample_context(emails, event_type, spec)["verify_url"]
    assert check(emails) == []


def test_rendering_a_template_that_is_missing_says_where_it_looked() -> None:
    with pytest.raises(TemplateProblem, match=r"de-AT/nothing.*de/nothing.*en/nothing"):
        Emails.load().render("nothing", "de-AT", {})


# -- the command ---------------------------------------------------------------------------


def test_templates_check_passes_on_the_built_ins_and_a_good_team_folder(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("NOTIFIER_TEMPLATES_DIR", raising=False)
    built_in = CliRunner().invoke(app, ["templates", "check"])
    assert built_in.exit_code == 0, built_in.output
    assert "5 emails in 4 locales" in built_in.output
    monkeypatch.setenv("NOTIFIER_TEMPLATES_DIR", str(TEAM))
    team = CliRunner().invoke(app, ["templates", "check"])
    assert team.exit_code == 0, team.output


def test_templates_check_fails_on_a_missing_variable_with_one_line_each(
    monkeypatch: pytest.MonkeyPatch, team: Path
) -> None:
    (team / "en" / "welcome.subject.txt").write_text("Hi {{ nickname }}\n", encoding="utf-8")
    monkeypatch.setenv("NOTIFIER_TEMPLATES_DIR", str(team))
    result = CliRunner().invoke(app, ["templates", "check"])
    assert result.exit_code == 1
    assert result.output.splitlines() == [
        "welcome (user.registered, en): en/welcome.subject.txt line 1: 'nickname' is undefined"
    ]


def test_templates_preview_prints_and_writes_an_email(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("NOTIFIER_TEMPLATES_DIR", str(TEAM))
    monkeypatch.setenv("BRAND_NAME", "Acme")
    shown = CliRunner().invoke(app, ["templates", "preview", "security_notice", "--locale", "de"])
    assert shown.exit_code == 0, shown.output
    assert shown.output.startswith("Subject: Sicherheitshinweis: Ihre Adresse bei Acme")
    written = CliRunner().invoke(
        app, ["templates", "preview", "welcome", "--locale", "fr", "--out", str(tmp_path)]
    )
    assert written.exit_code == 0, written.output
    html = (tmp_path / "welcome.fr.html").read_text()
    assert "Bienvenue" in html
    assert (tmp_path / "welcome.fr.txt").exists()
    unknown = CliRunner().invoke(app, ["templates", "preview", "nothing"])
    assert unknown.exit_code == 1
    assert "no email 'nothing'" in unknown.output


def test_a_broken_catalogue_stops_the_command_with_exit_2(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    write_catalogue(tmp_path, {"emails": {"user.teleported": []}})
    monkeypatch.setenv("NOTIFIER_TEMPLATES_DIR", str(tmp_path))
    result = CliRunner().invoke(app, ["templates", "check"])
    assert result.exit_code == 2
    assert "is not a user event type" in result.output


def test_the_published_catalogue_schema_is_what_the_code_generates() -> None:
    from postroom.emails.catalogue import catalogue_schema_json

    published = Path(__file__).parents[2] / "docs" / "emails.schema.json"
    assert published.read_text() == catalogue_schema_json(), (
        "regenerate it: postroom templates schema > docs/emails.schema.json"
    )


# -- what the review found ------------------------------------------------------------------


def test_a_template_expression_that_raises_is_a_one_line_problem(team: Path) -> None:
    (team / "en" / "welcome.subject.txt").write_text("Hi {{ name + 1 }}\n", encoding="utf-8")
    [problem] = check(Emails.load(team))
    assert problem.startswith("welcome (user.registered, en): en/welcome.subject.txt line 1: ")
    assert "TypeError" in problem
    assert "\n" not in problem


def test_an_email_whose_parts_are_both_empty_is_a_problem(team: Path) -> None:
    (team / "en" / "security_notice.html").write_text("", encoding="utf-8")
    (team / "en" / "security_notice.txt").write_text("{% if false %}x{% endif %}", encoding="utf-8")
    [problem] = check(Emails.load(team))
    assert "both the HTML and the text part are empty" in problem


def test_a_huge_or_odd_locale_in_an_event_is_not_kept() -> None:
    """Events come from any service: a locale that is no tag renders in the default locale,
    and only canonical tags are remembered."""
    emails = Emails.load()
    context = {"name": "Ada", "email": "a@example.com", "verify_url": "https://x/"}
    for n in range(200):
        rendered = emails.render("welcome", f"{n}" * 50_000, context)
        assert rendered.locale == "en"
    emails.render("welcome", "de-at", context)
    emails.render("welcome", "DE-AT", context)
    assert len(emails._chosen) == 2  # (welcome, None) and (welcome, de-AT)


def test_a_locale_folder_the_catalogue_does_not_promise_is_checked_too(team: Path) -> None:
    """`pt/` is not in `locales:`, but Portuguese users get what is in it: it must render
    (it need not hold every email)."""
    (team / "pt").mkdir()
    (team / "pt" / "welcome.subject.txt").write_text("Bem-vindo {{ nome }}\n", encoding="utf-8")
    for part in ("html", "txt"):
        (team / "pt" / f"welcome.{part}").write_text("Olá {{ name }}\n", encoding="utf-8")
    assert check(Emails.load(team)) == [
        "welcome (user.registered, pt): pt/welcome.subject.txt line 1: 'nome' is undefined"
    ]
