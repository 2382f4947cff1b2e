"""The dev inbox: captured messages as web pages a developer can search, read, and delete.

Message content is untrusted. Every value goes through Jinja2's autoescaping; the HTML part is
shown only inside `<iframe sandbox srcdoc=...>` (no scripts, no same-origin access), and the
pages carry a Content-Security-Policy that allows no scripts at all: deleting works with plain
forms, and their POSTs are refused when another site's page sends them.
"""

from __future__ import annotations

import json
import re
from datetime import datetime
from urllib.parse import urlsplit

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse
from jinja2 import DictLoader, Environment
from markupsafe import Markup, escape

from postroom.emails import TemplateProblem
from postroom.emails.samples import preview
from postroom.settings import ConfigError
from sandbox.inbox_filter import InboxFilter, unknown_params
from sandbox.state import OperatorDep, SandboxDep

router = APIRouter(include_in_schema=False, dependencies=[OperatorDep])

_PAGE_SIZE = 200
_URL = re.compile(r"https?://[^\s<>\"']+")
_TRAILING = ".,;:!?)]}'\""
_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'unsafe-inline'; img-src * data:; "
        "frame-ancestors 'self'; base-uri 'none'; form-action 'self'"
    ),
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
}

_LAYOUT = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
{% block head %}{% endblock %}
<title>{% block title %}{% endblock %} · Postroom sandbox</title>
<style>
body { font: 15px/1.45 system-ui, sans-serif; margin: 0; color: #1d2330; background: #f6f7f9; }
header { background: #1d2330; color: #fff; padding: .6rem 1.2rem; }
header { display: flex; flex-wrap: wrap; gap: .4rem 1.5rem; align-items: baseline; }
header a { color: #fff; text-decoration: none; font-weight: 600; }
nav a { font-weight: 400; margin-right: 1rem; }
.pair { display: grid; grid-template-columns: 1fr; gap: 1rem; margin-bottom: 2rem; }
@media (min-width: 60rem) { .pair { grid-template-columns: 3fr 2fr; } }
.pair iframe, .pair pre { height: 30rem; margin: 0; overflow: auto; }
.problem { background: #fff4f2; border: 1px solid #e5b4ab; padding: .6rem .8rem; }
.locales a { margin-right: .6rem; }
main { padding: 1rem 1.2rem; max-width: 72rem; }
table { border-collapse: collapse; width: 100%; background: #fff; }
th, td { text-align: left; padding: .4rem .6rem; border-bottom: 1px solid #e3e6eb;
         vertical-align: top; overflow-wrap: anywhere; }
th { background: #eef0f4; font-weight: 600; }
tr:hover td { background: #fafbfd; }
.muted { color: #6b7385; }
.tag { background: #e7eefc; color: #244a9b; border-radius: 3px; padding: 0 .35rem; }
iframe { width: 100%; height: 32rem; border: 1px solid #d5d9e0; background: #fff; }
pre { background: #fff; border: 1px solid #d5d9e0; padding: .8rem; white-space: pre-wrap;
      overflow-wrap: anywhere; }
dl { display: grid; grid-template-columns: max-content 1fr; gap: .2rem 1rem; }
dt { font-weight: 600; } dd { margin: 0; overflow-wrap: anywhere; }
.bar { display: flex; flex-wrap: wrap; gap: .5rem 1rem; align-items: center; margin: .4rem 0; }
.bar input[type=search] { width: 22rem; max-width: 100%; padding: .3rem .5rem; font: inherit; }
button { font: inherit; padding: .25rem .8rem; cursor: pointer; }
button.danger { background: #b42318; color: #fff; border: 1px solid #8f1c13; border-radius: 3px; }
.actions { display: flex; gap: 1rem; align-items: center; }
form { margin: 0; }
</style>
</head>
<body>
<header><a href="/">Postroom sandbox · dev inbox</a>
<nav><a href="/">Inbox</a> <a href="/previews">Templates</a></nav></header>
<main>
{% block main %}{% endblock %}
</main>
</body>
</html>
"""

_INDEX = """{% extends "layout.html" %}
{% block head %}<meta http-equiv="refresh" content="5">{% endblock %}
{% block title %}Inbox ({{ total }}){% endblock %}
{% block main %}
<form class="bar" method="get" action="/" role="search">
<input type="search" name="q" value="{{ search.q }}" aria-label="Search"
 placeholder="Recipient, subject or tag">
{% for name, value in search.fields() %}<input type="hidden" name="{{ name }}" value="{{ value
}}">{% endfor %}
<button type="submit">Search</button>
{% if search %}<a href="/">Show all</a>{% endif %}
{% if total %}<a href="/clear">Clear all&hellip;</a>{% endif %}
</form>
{% if unknown %}<p class="problem">Unknown search parameter{{ "s" if unknown | length > 1 }}: {%
for name in unknown %}<code>{{ name }}</code>{{ "" if loop.last else ", " }}{% endfor %}.
The search takes <code>q</code>, <code>to</code>, <code>subject</code>, <code>tag</code> and
<code>metadata_&lt;field&gt;</code>. <a href="/">Show all</a></p>
{% else %}
{% if search.fields() %}<p class="muted">Only messages with {% for name, value in search.fields()
%}<code>{{ name }}</code> = <strong>{{ value }}</strong>{{ "" if loop.last else ", " }}{% endfor
%}.</p>{% endif %}
<p class="muted">{{ total }} message{{ "" if total == 1 else "s" }} in the inbox{% if search %},
{{ found }} matching{% endif %}, newest first; this page refreshes every 5 seconds.
JSON at <code>/api/messages{{ "?" ~ search.query_string() if search else "" }}</code>.</p>
{% if messages %}
<table>
<thead><tr><th>Received (UTC)</th><th>From</th><th>To</th><th>Subject</th><th>Tag</th></tr></thead>
<tbody>
{% for m in messages %}
<tr>
<td class="muted">{{ m.received_at | when }}</td>
<td>{{ m.sender }}</td>
<td>{{ m.recipients | map(attribute="email") | join(", ") }}</td>
<td><a href="/messages/{{ m.message_id }}">{{ m.subject or "(no subject)" }}</a></td>
<td>{% if m.tag %}<a class="tag" href="/?tag={{ m.tag | urlencode }}"
 title="Only messages tagged {{ m.tag }}">{{ m.tag }}</a>{% endif %}</td>
</tr>
{% endfor %}
</tbody>
</table>
{% if found > messages | length %}
<p class="muted">Showing the newest {{ messages | length }}.</p>
{% endif %}
{% elif search %}
<p>No messages match.</p>
{% else %}
<p>No messages yet. Send one to <code>POST /email</code>.</p>
{% endif %}
{% endif %}
{% endblock %}
"""

_MESSAGE = """{% extends "layout.html" %}
{% block title %}{{ m.subject or "(no subject)" }}{% endblock %}
{% block main %}
<div class="actions"><a href="/">&larr; all messages</a>
<a href="/messages/{{ m.message_id }}/raw">Raw</a>
<form method="post" action="/messages/{{ m.message_id }}/delete">
<button class="danger" type="submit">Delete</button></form></div>
<h1>{{ m.subject or "(no subject)" }}</h1>
<dl>
<dt>From</dt><dd>{{ m.sender }}</dd>
<dt>To</dt><dd>{{ m.to }}</dd>
{% if m.cc %}<dt>Cc</dt><dd>{{ m.cc }}</dd>{% endif %}
{% if m.bcc %}<dt>Bcc</dt><dd>{{ m.bcc }}</dd>{% endif %}
{% if m.reply_to %}<dt>Reply-To</dt><dd>{{ m.reply_to }}</dd>{% endif %}
<dt>Received</dt><dd>{{ m.received_at | when }} UTC</dd>
<dt>MessageID</dt><dd><code>{{ m.message_id }}</code>
  (<a href="/api/messages/{{ m.message_id }}">JSON</a>)</dd>
<dt>Stream</dt><dd>{{ m.message_stream }}</dd>
{% if m.tag %}<dt>Tag</dt><dd><span class="tag">{{ m.tag }}</span></dd>{% endif %}
{% if m.template_alias %}<dt>Template</dt><dd><code>{{ m.template_alias }}</code></dd>{% endif %}
</dl>
{% if m.html_body %}
<h2>HTML part</h2>
<iframe sandbox srcdoc="{{ m.html_body }}" title="HTML part"></iframe>
{% endif %}
{% if m.text_body %}
<h2>Text part</h2>
<pre>{{ m.text_body | linkify }}</pre>
{% endif %}
<h2>Metadata</h2>
{% if m.metadata %}
<table><tbody>
{% for name, value in m.metadata.items() %}<tr><th>{{ name }}</th><td>{{ value }}</td></tr>
{% endfor %}
</tbody></table>
{% else %}<p class="muted">None.</p>{% endif %}
<h2>Headers</h2>
{% if m.headers %}
<table><tbody>
{% for header in m.headers %}<tr><th>{{ header.Name }}</th><td>{{ header.Value }}</td></tr>
{% endfor %}
</tbody></table>
{% else %}<p class="muted">None.</p>{% endif %}
{% if m.attachments %}
<h2>Attachments</h2>
<ul>{% for a in m.attachments %}<li>{{ a.Name }} <span class="muted">{{ a.ContentType }}</span>
</li>{% endfor %}</ul>
{% endif %}
{% endblock %}
"""

_RAW = """{% extends "layout.html" %}
{% block title %}Raw: {{ m.subject or "(no subject)" }}{% endblock %}
{% block main %}
<div class="actions"><a href="/messages/{{ m.message_id }}">&larr; the message</a>
<a href="/api/messages/{{ m.message_id }}/raw">JSON</a></div>
<h1>Raw message</h1>
<p class="muted">As Postmark received it: its fields in Postmark's names, then its own
headers; the text part; the HTML part's source.</p>
<pre id="headers">{% for name, value in m.raw_headers() %}{{ name }}: {{ value }}
{% endfor %}</pre>
<h2>Text part</h2>
{% if m.text_body is not none %}<pre id="text-part">{{ m.text_body }}</pre>
{% else %}<p class="muted">None.</p>{% endif %}
<h2>HTML part (source)</h2>
{% if m.html_body is not none %}<pre id="html-part">{{ m.html_body }}</pre>
{% else %}<p class="muted">None.</p>{% endif %}
{% endblock %}
"""

_CLEAR = """{% extends "layout.html" %}
{% block title %}Clear the inbox{% endblock %}
{% block main %}
<h1>Clear the inbox?</h1>
<p>This deletes all {{ total }} message{{ "" if total == 1 else "s" }} from the dev inbox and
makes every address the sandbox bounced active again.</p>
<p class="muted">Postmark's record of what was sent stays: the outbound message search still
finds these messages, as it would at Postmark, so the notifier never sends one twice.</p>
<div class="actions">
<form method="post" action="/clear"><button class="danger" type="submit">Delete all
messages</button></form>
<a href="/">Cancel</a>
</div>
{% endblock %}
"""

_PREVIEWS = """{% extends "layout.html" %}
{% block title %}Templates{% endblock %}
{% block main %}
<h1>Templates</h1>
<p class="muted">Every email of the catalogue rendered with a sample event, as the notifier
would send it; nothing is sent. Read from {{ source }} on every visit, so an edited file shows
on reload. <code>postroom templates check</code> says the same in a terminal.</p>
{% if refused %}
<p class="problem">{{ refused }}</p>
{% else %}
<p class="locales">Locale:
{% for each in locales %}{% if each == locale %}<strong>{{ each }}</strong>{% else %}<a
href="/previews?locale={{ each }}">{{ each }}</a>{% endif %} {% endfor %}</p>
{% for item in items %}
<h2 id="{{ item.name }}">{{ item.name }} <span class="muted">· {{ item.event_type }} · to {{
item.to }} · stream {{ item.stream }} · tag <span class="tag">{{ item.tag }}</span></span></h2>
{% if item.problem %}
<p class="problem">{{ item.problem }}</p>
{% elif item.alias %}
<p>Sent with the Postmark template <code>{{ item.alias }}</code> ({{ item.locale }}); Postmark
renders it with this model:</p>
<pre>{{ item.model }}</pre>
{% else %}
<p><strong>Subject:</strong> {{ item.subject }}
{% if item.locale != locale %}<span class="muted">(written in {{ item.locale }}: no {{ locale }}
template)</span>{% endif %}</p>
<div class="pair">
<iframe sandbox srcdoc="{{ item.html }}" title="{{ item.name }}: HTML part"></iframe>
<pre>{{ item.text }}</pre>
</div>
{% endif %}
{% endfor %}
{% endif %}
{% endblock %}
"""

_NOT_FOUND = """{% extends "layout.html" %}
{% block title %}Not found{% endblock %}
{% block main %}<p>No captured message has the id <code>{{ message_id }}</code>; it may have been
cleared. <a href="/">Back to the inbox</a>.</p>{% endblock %}
"""


def linkify(text: str) -> Markup:
    """Escape text and make its http(s) links clickable."""
    parts: list[str] = []
    position = 0
    for match in _URL.finditer(text):
        url = match.group(0).rstrip(_TRAILING)
        parts.append(escape(text[position : match.start()]))
        parts.append(Markup('<a href="{0}" rel="noopener noreferrer">{0}</a>').format(url))
        position = match.start() + len(url)
    parts.append(escape(text[position:]))
    return Markup("").join(parts)


def _when(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%S")


def create_templates() -> Environment:
    environment = Environment(
        loader=DictLoader(
            {
                "layout.html": _LAYOUT,
                "index.html": _INDEX,
                "message.html": _MESSAGE,
                "raw.html": _RAW,
                "clear.html": _CLEAR,
                "not_found.html": _NOT_FOUND,
                "previews.html": _PREVIEWS,
            }
        ),
        autoescape=True,
    )
    environment.filters["linkify"] = linkify
    environment.filters["when"] = _when
    return environment


def _render(request: Request, name: str, status: int = 200, **context: object) -> HTMLResponse:
    environment: Environment = request.app.state.templates
    body = environment.get_template(name).render(**context)
    return HTMLResponse(body, status_code=status, headers=_HEADERS)


def _from_another_site(request: Request) -> bool:
    """Whether a POST came from another site's page: these pages have no scripts, cookies or
    CORS, so what the browser says of a form's origin is what tells. Chromium sends
    `Origin: null` under our `no-referrer` policy, so `Sec-Fetch-Site` decides where browsers
    send it; clients that send neither (curl, tests) are not browsers posting for a page."""
    site = request.headers.get("sec-fetch-site")
    if site is not None:
        return site not in ("same-origin", "none")
    origin = request.headers.get("origin")
    return origin is not None and urlsplit(origin).netloc != request.headers.get("host")


def _refused() -> HTMLResponse:
    return HTMLResponse(
        "Refused: this form was sent from another site.", status_code=403, headers=_HEADERS
    )


@router.get("/")
async def inbox(request: Request, sandbox: SandboxDep) -> HTMLResponse:
    search = InboxFilter.from_params(request.query_params)
    unknown = unknown_params(request.query_params)
    if unknown:  # a mistyped link: say so rather than list every message as if it matched
        return _render(
            request,
            "index.html",
            status=422,
            messages=[],
            found=0,
            total=sandbox.store.inbox_size,
            search=search,
            unknown=unknown,
        )
    found = sandbox.store.inbox(search)
    return _render(
        request,
        "index.html",
        messages=found[:_PAGE_SIZE],
        found=len(found),
        total=sandbox.store.inbox_size,
        search=search,
        unknown=[],
    )


@router.get("/messages/{message_id}")
async def message_page(message_id: str, request: Request, sandbox: SandboxDep) -> HTMLResponse:
    message = sandbox.store.in_inbox(message_id)
    if message is None:
        return _render(request, "not_found.html", status=404, message_id=message_id)
    return _render(request, "message.html", m=message)


@router.get("/messages/{message_id}/raw")
async def raw_page(message_id: str, request: Request, sandbox: SandboxDep) -> HTMLResponse:
    message = sandbox.store.in_inbox(message_id)
    if message is None:
        return _render(request, "not_found.html", status=404, message_id=message_id)
    return _render(request, "raw.html", m=message)


@router.post("/messages/{message_id}/delete", response_model=None)
async def delete_message(
    message_id: str, request: Request, sandbox: SandboxDep
) -> HTMLResponse | RedirectResponse:
    if _from_another_site(request):
        return _refused()
    if not sandbox.store.delete_from_inbox(message_id):
        return _render(request, "not_found.html", status=404, message_id=message_id)
    return RedirectResponse("/", status_code=303)


@router.get("/clear")
async def clear_page(request: Request, sandbox: SandboxDep) -> HTMLResponse:
    """Clearing asks first, on a page of its own: there is no script to ask with."""
    return _render(request, "clear.html", total=sandbox.store.inbox_size)


@router.post("/clear", response_model=None)
async def clear(request: Request, sandbox: SandboxDep) -> HTMLResponse | RedirectResponse:
    if _from_another_site(request):
        return _refused()
    sandbox.store.clear()
    return RedirectResponse("/", status_code=303)


@router.get("/previews")
async def previews(request: Request, sandbox: SandboxDep) -> HTMLResponse:
    """The Templates page: every email of the catalogue in one locale, HTML beside text,
    rendered with sample data from the templates as they are on disk now."""
    settings = sandbox.settings
    source = str(settings.notifier_templates_dir or "the built-in templates")
    try:
        emails = settings.load_emails(check_all=False)
    except ConfigError as exc:
        return _render(request, "previews.html", status=500, refused=str(exc), source=source)
    locale = request.query_params.get("locale") or emails.default_locale
    if locale not in emails.locales():
        locale = emails.default_locale
    items = []
    for event_type, spec in emails.catalogue.all():
        item: dict[str, object] = {
            "name": spec.name,
            "event_type": event_type,
            "to": spec.to,
            "stream": spec.stream or "the default (POSTMARK_MESSAGE_STREAM)",
            "tag": spec.tag_or_name,
        }
        try:
            shown = preview(emails, spec.name, locale)
        except TemplateProblem as exc:
            item["problem"] = str(exc)
        else:
            item["locale"] = shown.locale
            if shown.rendered is None:
                item["alias"] = emails.postmark_alias(spec, locale)
                item["model"] = json.dumps(shown.model, indent=2, sort_keys=True)
            else:
                item |= {
                    "subject": shown.rendered.subject,
                    "html": shown.rendered.html,
                    "text": shown.rendered.text,
                }
        items.append(item)
    return _render(
        request,
        "previews.html",
        items=items,
        locale=locale,
        locales=emails.locales(),
        source=source,
        refused=None,
    )
