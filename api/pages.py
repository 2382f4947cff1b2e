"""The HTML pages of a verification link: the confirmation (one button), the outcome, and
the way to a new link when this one has expired. Styled by one small stylesheet the api
serves itself (`/assets/postroom.css`: no CDN, nothing from another site), in the brand's
name, readable on a phone."""

from __future__ import annotations

from dataclasses import dataclass
from html import escape
from importlib.resources import files

from fastapi.responses import HTMLResponse, Response

STYLESHEET_PATH = "/assets/postroom.css"
STYLESHEET = files("api").joinpath("static/postroom.css").read_text(encoding="utf-8")


@dataclass(frozen=True, slots=True)
class PageBrand:
    name: str
    support_email: str = ""


@dataclass(frozen=True, slots=True)
class _Outcome:
    status: int
    title: str
    message: str  # `{email}`, `{product}`, `{minutes}` filled in, then escaped


_OUTCOMES = {
    "verified": _Outcome(
        200, "Email verified", "Thank you: {email} is now verified. You can close this page."
    ),
    "invalid": _Outcome(
        400,
        "Link not valid",
        "This verification link is not valid. Copy the whole link from the email into your "
        "browser; if it still fails, the email's most recent link is the one to use.",
    ),
    "expired": _Outcome(
        410,
        "Link expired",
        "This verification link has expired. We can send a new one to the address it was for.",
    ),
    "too-old": _Outcome(
        410,
        "Link too old",
        "This verification link is too old to send a new one from. Ask {product} for a new "
        "verification email from your account.",
    ),
    "superseded": _Outcome(
        410,
        "Link no longer valid",
        "This link is for an address the account no longer uses, or for a deleted account. "
        "The most recent email we sent has a link that works.",
    ),
    "unavailable": _Outcome(
        503,
        "Try again shortly",
        "We could not verify your address just now. Please try the link again in a minute.",
    ),
    "sent": _Outcome(
        202,
        "A new link is on its way",
        "We sent a new verification link to {email}. It may take a minute to arrive; "
        "the link in it replaces this one.",
    ),
    "already-verified": _Outcome(
        409, "Already verified", "{email} is verified already: there is nothing more to do."
    ),
    "too-soon": _Outcome(
        429,
        "A new link was sent recently",
        "A new link was sent a short while ago; look for it in your inbox (and spam folder). "
        "You can ask for another in {minutes}.",
    ),
}
STATUSES = {outcome.status for outcome in _OUTCOMES.values()}

_CONFIRM = """<p>Verify that <strong>{email}</strong> is your address.</p>
<form method="post" action="verify-email">
<input type="hidden" name="token" value="{token}">
<button type="submit">Verify {email}</button>
</form>"""

_RESEND = """<form method="post" action="verify-email/resend">
<input type="hidden" name="token" value="{token}">
<button type="submit">Send me a new link</button>
</form>"""

_PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="referrer" content="no-referrer">
<title>{title} · {product}</title>
<link rel="stylesheet" href="{stylesheet}">
</head>
<body>
<header><span class="brand">{product}</span></header>
<main class="card">
<h1>{title}</h1>
{content}
</main>
{footer}
</body>
</html>
"""

# The URL carries the token: keep it out of caches and of other sites' Referer headers; the
# page runs no script, takes its one stylesheet from here, and its forms post back here.
_HEADERS = {
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'self'; form-action 'self'; frame-ancestors 'none'"
    ),
}


def _page(brand: PageBrand, status: int, title: str, content: str) -> HTMLResponse:
    footer = ""
    if brand.support_email:
        address = escape(brand.support_email, quote=True)
        footer = f'<footer>Questions? Write to <a href="mailto:{address}">{address}</a>.</footer>'
    body = _PAGE.format(
        title=escape(title),
        product=escape(brand.name),
        stylesheet=STYLESHEET_PATH,
        content=content,
        footer=footer,
    )
    return HTMLResponse(body, status_code=status, headers=_HEADERS)


def confirmation_page(brand: PageBrand, *, token: str, email: str) -> HTMLResponse:
    """What a verification link opens: the address, and one button that verifies it. The
    GET changes nothing, so mail gateways that open links verify nobody."""
    content = _CONFIRM.format(email=escape(email), token=escape(token, quote=True))
    return _page(brand, 200, "Verify your email address", content)


def outcome_page(
    brand: PageBrand, outcome: str, *, email: str = "", token: str = "", retry_after: int = 0
) -> HTMLResponse:
    """What happened: verified, why not, or a new link asked for. An expired link's page
    offers a new one (`token` given)."""
    kind = _OUTCOMES[outcome]
    minutes = max(1, -(-retry_after // 60))
    message = kind.message.format(
        email=email, product=brand.name, minutes=f"{minutes} minute{'s' * (minutes > 1)}"
    )
    content = f"<p>{escape(message)}</p>"
    if outcome == "expired" and token:
        content += _RESEND.format(token=escape(token, quote=True))
    response = _page(brand, kind.status, kind.title, content)
    if outcome == "too-soon":
        response.headers["Retry-After"] = str(retry_after)
    return response


def stylesheet() -> Response:
    return Response(
        STYLESHEET,
        media_type="text/css",
        headers={"Cache-Control": "public, max-age=86400", "X-Content-Type-Options": "nosniff"},
    )
