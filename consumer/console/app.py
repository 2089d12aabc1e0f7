"""The console's ASGI application: authentication, CSRF, templates and the routes of every screen.

Starlette with server-rendered Jinja2 pages (auto-escaped) and no inline script: every screen works
without JavaScript. Pages that need the broker show a banner when it does not answer.
"""

from __future__ import annotations

import ipaddress
import secrets
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.sessions import SessionMiddleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from consumer import __version__
from consumer.console.auth import Authenticator, Identity
from consumer.console.data import ConsoleData, ConsoleUnavailable
from consumer.console.security import SecurityHeaders, csrf_ok, csrf_token
from consumer.settings import Settings

HERE = Path(__file__).resolve().parent
SESSION_USER = "user"
Handler = Callable[[Request], Awaitable[Response]]


class Console:
    """What every page handler needs: settings, data, authentication and the templates."""

    def __init__(self, settings: Settings, data: ConsoleData, local: bool = False) -> None:
        self.settings = settings
        self.data = data
        self.auth = Authenticator(settings.console, local=local)
        self.templates = Jinja2Templates(directory=str(HERE / "templates"))
        self.templates.env.globals["version"] = __version__

    def identity(self, request: Request) -> Identity | None:
        client = request.client.host if request.client else None
        header = request.headers.get(self.settings.console.proxy_header)
        return self.auth.identify(client, header, request.session.get(SESSION_USER))

    def page(self, request: Request, template: str, status_code: int = 200, **context: Any) -> Response:
        context |= {
            "request": request,
            "me": request.state.identity,
            "csrf": csrf_token(request.session),
            "auth_mode": self.auth.mode,
        }
        return self.templates.TemplateResponse(request, template, context, status_code=status_code)

    def unavailable(
        self, request: Request, exc: ConsoleUnavailable, template: str = "banner.html"
    ) -> Response:
        return self.page(request, template, status_code=503, banner=str(exc))


def _https_from_proxy(console: Console) -> Callable[[Any], bool]:
    networks = console.auth.networks

    def https(scope: Any) -> bool:
        client = scope.get("client")
        if not client:
            return False
        try:
            trusted = any(ipaddress.ip_address(client[0]) in net for net in networks)
        except ValueError:
            return False
        proto = dict(scope.get("headers", [])).get(b"x-forwarded-proto", b"")
        return trusted and proto.lower() == b"https"

    return https


def viewer(console: Console, handler: Callable[[Console, Request], Awaitable[Response]]) -> Handler:
    """Any authenticated user; others get the login page (password mode) or 401."""

    async def endpoint(request: Request) -> Response:
        identity = console.identity(request)
        if identity is None:
            if console.auth.mode == "password" and request.method == "GET":
                return RedirectResponse(f"/login?next={request.url.path}", status_code=303)
            return PlainTextResponse("authentication required", status_code=401)
        request.state.identity = identity
        if request.method == "POST":
            form = await request.form()
            if not csrf_ok(request.session, form.get("csrf")):
                return PlainTextResponse("missing or wrong CSRF token: reload the page", status_code=403)
        return await handler(console, request)

    return endpoint


def editor(console: Console, handler: Callable[[Console, Request], Awaitable[Response]]) -> Handler:
    """Editors only: a viewer gets 403."""

    async def checked(console: Console, request: Request) -> Response:
        if not request.state.identity.can_edit:
            return PlainTextResponse("editors only: you may look, not change", status_code=403)
        return await handler(console, request)

    return viewer(console, checked)


async def _login_page(
    console: Console, request: Request, error: str | None = None, status: int = 200
) -> Response:
    request.state.identity = None
    return console.page(
        request, "login.html", status_code=status, error=error, next=request.query_params.get("next", "/")
    )


def build_app(settings: Settings, data: ConsoleData, local: bool = False) -> Starlette:
    from consumer.console import views

    console = Console(settings, data, local)

    async def healthz(request: Request) -> Response:
        return PlainTextResponse("ok")

    async def readyz(request: Request) -> Response:
        if console.data.rules_ready:
            return PlainTextResponse("ready")
        return PlainTextResponse(f"reading the rules topic {settings.topics.rules}", status_code=503)

    async def login_get(request: Request) -> Response:
        if console.auth.mode != "password":
            return RedirectResponse("/", status_code=303)
        return await _login_page(console, request)

    async def login_post(request: Request) -> Response:
        if console.auth.mode != "password":
            return PlainTextResponse("no login in this mode", status_code=404)
        form = await request.form()
        if not csrf_ok(request.session, form.get("csrf")):
            return PlainTextResponse("missing or wrong CSRF token: reload the page", status_code=403)
        client = request.client.host if request.client else None
        result = console.auth.login(str(form.get("username") or ""), str(form.get("password") or ""), client)
        if isinstance(result, str):
            return await _login_page(console, request, error=result, status=401)
        request.session.clear()
        request.session[SESSION_USER] = result.name
        target = str(form.get("next") or "/")
        return RedirectResponse(
            target if target.startswith("/") and not target.startswith("//") else "/", 303
        )

    async def logout(console: Console, request: Request) -> Response:
        request.session.clear()
        return RedirectResponse("/login" if console.auth.mode == "password" else "/", status_code=303)

    routes = [
        Route("/healthz", healthz),
        Route("/readyz", readyz),
        Route("/login", login_get, methods=["GET"]),
        Route("/login", login_post, methods=["POST"]),
        Route("/logout", viewer(console, logout), methods=["POST"]),
        Route("/", viewer(console, views.home)),
        Route("/rules", viewer(console, views.rules_list)),
        Route("/rules/new", viewer(console, views.rule_new), methods=["GET"]),
        Route("/rules/save", editor(console, views.rule_save), methods=["POST"]),
        Route("/rules/preview", viewer(console, views.rule_preview), methods=["POST"]),
        Route("/rules/{rule_id}", viewer(console, views.rule_detail)),
        Route("/rules/{rule_id}/edit", viewer(console, views.rule_edit)),
        Route("/rules/{rule_id}/yaml", viewer(console, views.rule_yaml)),
        Route("/rules/{rule_id}/enabled", editor(console, views.rule_enabled), methods=["POST"]),
        Route("/rules/{rule_id}/delete", viewer(console, views.rule_delete_confirm), methods=["GET"]),
        Route("/rules/{rule_id}/delete", editor(console, views.rule_delete), methods=["POST"]),
        Route("/log", viewer(console, views.smtp_log)),
        Route("/log/{partition:int}/{offset:int}", viewer(console, views.outcome_detail)),
        Route("/alerts", viewer(console, views.alerts)),
        Route("/usage", viewer(console, views.usage)),
        Route("/connections", viewer(console, views.connections)),
        Route("/connections/test", editor(console, views.connection_test), methods=["POST"]),
        Mount("/static", StaticFiles(directory=str(HERE / "static")), name="static"),
    ]
    key = settings.console.session_key
    middleware = [
        Middleware(SecurityHeaders, https_from_proxy=_https_from_proxy(console)),
        Middleware(
            SessionMiddleware,
            secret_key=key.get_secret_value() if key is not None else secrets.token_urlsafe(32),
            session_cookie="eventmail_session",
            max_age=settings.console.session_max_age_seconds,
            same_site="strict",
        ),
    ]
    return Starlette(routes=routes, middleware=middleware)
