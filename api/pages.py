"""The plain HTML pages of a verification link: the confirmation (one button), then the outcome."""

from __future__ import annotations

from html import escape

from fastapi.responses import HTMLResponse

_CONFIRM_TITLE = "Verify your email address"
_CONFIRM = """<p>Verify that {email} is your address.</p>
<form method="post" action="verify-email">
<input type="hidden" name="token" value="{token}">
<button type="submit">Verify {email}</button>
</form>"""

_MESSAGES = {
    200: ("Email verified", "Thank you: {email} is now verified. You can close this page."),
    400: (
        "Link not valid",
        "This verification link is not valid. Copy the whole link from "
        "the email, or ask for a new one.",
    ),
    410: (
        "Link no longer valid",
        "This verification link has expired or belongs to an "
        "address the account no longer uses. Ask for a new one.",
    ),
    503: (
        "Try again shortly",
        "We could not verify your address just now. Please try the link again in a minute.",
    ),
}

_TEMPLATE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="referrer" content="no-referrer">
<title>{title}</title>
</head>
<body>
<main>
<h1>{title}</h1>
{content}
</main>
</body>
</html>
"""


# The URL carries the token: keep it out of caches and of other sites' Referer headers; the
# page runs no script and its one form posts back here.
_HEADERS = {
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": "default-src 'none'; form-action 'self'; frame-ancestors 'none'",
}


def confirmation_page(*, token: str, email: str) -> HTMLResponse:
    """What a verification link opens: the address, and one button that verifies it. The
    GET changes nothing, so mail gateways that open links verify nobody."""
    content = _CONFIRM.format(email=escape(email), token=escape(token, quote=True))
    body = _TEMPLATE.format(title=escape(_CONFIRM_TITLE), content=content)
    return HTMLResponse(body, status_code=200, headers=_HEADERS)


def verification_page(status: int, *, email: str = "") -> HTMLResponse:
    """The outcome: verified, or why not."""
    title, message = _MESSAGES[status]
    content = f"<p>{escape(message.format(email=email))}</p>"
    body = _TEMPLATE.format(title=escape(title), content=content)
    return HTMLResponse(body, status_code=status, headers=_HEADERS)
