"""Response headers and request checks every console page gets.

- Security headers: a CSP with no inline script or style (``default-src 'self'``, ``frame-ancestors
  'none'``), ``X-Content-Type-Options: nosniff``, ``Referrer-Policy: same-origin``, no caching of pages.
- The session cookie is marked ``Secure`` when the request came over HTTPS (directly, or as the
  trusted proxy says in ``X-Forwarded-Proto``).
- CSRF: every form carries the session's token; a write without it (or with another) is refused.
"""

from __future__ import annotations

import hmac
import secrets
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'; object-src 'none'"
)
HEADERS = [
    (b"content-security-policy", CSP.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"same-origin"),
    (b"cache-control", b"no-store"),
]
CSRF_KEY = "csrf"


class SecurityHeaders:
    """Adds the headers above to every response; ``Secure`` on cookies sent over HTTPS."""

    def __init__(self, app: ASGIApp, https_from_proxy: Any) -> None:
        self.app = app
        self.https_from_proxy = https_from_proxy

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        https = scope.get("scheme") == "https" or bool(self.https_from_proxy(scope))

        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [
                    (name, value + b"; Secure" if https and name == b"set-cookie" else value)
                    for name, value in message.get("headers", [])
                ]
                message["headers"] = headers + HEADERS
            await send(message)

        await self.app(scope, receive, sending)


def csrf_token(session: dict[str, Any]) -> str:
    token = session.get(CSRF_KEY)
    if not isinstance(token, str):
        token = secrets.token_urlsafe(32)
        session[CSRF_KEY] = token
    return token


def csrf_ok(session: dict[str, Any], submitted: object) -> bool:
    token = session.get(CSRF_KEY)
    return isinstance(token, str) and isinstance(submitted, str) and hmac.compare_digest(token, submitted)
