"""Who is asking: the console's authentication modes, roles and login throttling.

- ``password``: users of ``EVENTMAIL_CONSOLE__USERS`` (argon2 hashes) log in on a form; the session
  cookie (signed, HttpOnly, SameSite=Strict, Secure over HTTPS) carries the user name. Failed logins
  are throttled per user and per client address.
- ``proxy``: an authenticating proxy in front sets ``EVENTMAIL_CONSOLE__PROXY_HEADER``; the header is
  believed only on connections from ``EVENTMAIL_CONSOLE__TRUSTED_PROXIES``. From anywhere else it is
  ignored and the request is unauthenticated. Editors are ``EVENTMAIL_CONSOLE__EDITORS``.
- local (``eventmail console --local``): bound to 127.0.0.1 only, everyone is an editor named
  ``local`` (the demo).
"""

from __future__ import annotations

import ipaddress
import threading
import time
from dataclasses import dataclass
from enum import StrEnum

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from consumer.settings import ConsoleAuth, ConsoleSettings

_HASHER = PasswordHasher()
#: Verified when the user name is unknown, so the answer takes as long as for a known user.
_DUMMY_HASH = _HASHER.hash("not a password of anyone")


class Role(StrEnum):
    VIEWER = "viewer"
    EDITOR = "editor"


@dataclass(frozen=True)
class Identity:
    name: str
    role: Role

    @property
    def can_edit(self) -> bool:
        return self.role is Role.EDITOR


def hash_password(password: str) -> str:
    """An argon2 hash for ``EVENTMAIL_CONSOLE__USERS``."""
    return _HASHER.hash(password)


def _verify(stored: str, password: str) -> bool:
    try:
        return _HASHER.verify(stored, password)
    except (VerificationError, InvalidHashError):
        return False


class LoginThrottle:
    """After ``free`` failed logins of one key (user or address) within ``window`` seconds, each
    further attempt waits twice as long as the one before (1 s, 2 s, 4 s ... up to ``cap``)."""

    def __init__(self, free: int = 5, window: float = 900.0, cap: float = 300.0) -> None:
        self.free, self.window, self.cap = free, window, cap
        self._failures: dict[str, tuple[int, float]] = {}
        self._lock = threading.Lock()

    def wait_seconds(self, key: str, now: float | None = None) -> float:
        """How long ``key`` must wait before its next attempt (0: it may try now)."""
        now = time.monotonic() if now is None else now
        with self._lock:
            count, last = self._failures.get(key, (0, 0.0))
            if now - last > self.window:
                self._failures.pop(key, None)
                return 0.0
            if count < self.free:
                return 0.0
            delay = min(self.cap, 2.0 ** (count - self.free))
            return max(0.0, last + delay - now)

    def failed(self, key: str, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        with self._lock:
            count, last = self._failures.get(key, (0, 0.0))
            self._failures[key] = (1 if now - last > self.window else count + 1, now)

    def succeeded(self, key: str) -> None:
        with self._lock:
            self._failures.pop(key, None)


class Authenticator:
    def __init__(self, settings: ConsoleSettings, local: bool = False) -> None:
        self.settings = settings
        self.local = local
        self.networks = [ipaddress.ip_network(cidr, strict=False) for cidr in settings.trusted_proxies]
        self.throttle = LoginThrottle()

    @property
    def mode(self) -> str:
        if self.local:
            return "local"
        assert self.settings.auth is not None
        return self.settings.auth.value

    def from_proxy(self, client_host: str | None, header_value: str | None) -> Identity | None:
        """The user the proxy names, if the connection comes from a trusted proxy."""
        if not header_value or client_host is None:
            return None
        try:
            address = ipaddress.ip_address(client_host)
        except ValueError:
            return None
        if not any(address in network for network in self.networks):
            return None
        name = header_value.strip()
        if not name or len(name) > 256:
            return None
        return Identity(name, Role.EDITOR if name in self.settings.editors else Role.VIEWER)

    def from_session(self, name: object) -> Identity | None:
        """The logged-in user of a session (None when unknown or since removed)."""
        if not isinstance(name, str):
            return None
        user = self.settings.users.get(name)
        return Identity(name, Role(user.role)) if user is not None else None

    def identify(
        self, client_host: str | None, header_value: str | None, session_user: object
    ) -> Identity | None:
        if self.local:
            return Identity("local", Role.EDITOR)
        if self.settings.auth is ConsoleAuth.PROXY:
            return self.from_proxy(client_host, header_value)
        return self.from_session(session_user)

    def login(self, name: str, password: str, client_host: str | None) -> Identity | str:
        """The user, or the error to show (the same for a wrong name and a wrong password)."""
        keys = (f"user:{name}", f"addr:{client_host}")
        wait = max(self.throttle.wait_seconds(key) for key in keys)
        if wait > 0:
            return f"too many failed logins: try again in {wait:.0f} s"
        user = self.settings.users.get(name)
        stored = user.password_hash.get_secret_value() if user is not None else _DUMMY_HASH
        if _verify(stored, password) and user is not None:
            for key in keys:
                self.throttle.succeeded(key)
            return Identity(name, Role(user.role))
        for key in keys:
            self.throttle.failed(key)
        return "unknown user or wrong password"
