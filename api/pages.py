"""The plain HTML pages a person sees after clicking a verification link."""

from __future__ import annotations

from html import escape

from fastapi.responses import HTMLResponse

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
<p>{message}</p>
</main>
</body>
</html>
"""


def verification_page(status: int, *, email: str = "") -> HTMLResponse:
    title, message = _MESSAGES[status]
    body = _TEMPLATE.format(title=escape(title), message=escape(message.format(email=email)))
    # The URL carries the token: keep it out of caches and of other sites' Referer headers.
    headers = {"Cache-Control": "no-store", "Referrer-Policy": "no-referrer"}
    return HTMLResponse(body, status_code=status, headers=headers)
