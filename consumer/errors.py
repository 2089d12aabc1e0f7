"""The error hierarchy of eventmail.

Every error the service raises on purpose derives from :class:`EventmailError`, so callers can catch
one type; each also subclasses the closest stdlib error (``ValueError``, ``ConnectionError`` ...) so
generic handlers keep working. Messages name the field or setting at fault and never carry secrets.
"""

from __future__ import annotations


class EventmailError(Exception):
    """Base of every deliberate eventmail error."""


class SettingsError(EventmailError, ValueError):
    """A setting is missing or invalid; the message names it."""


class CodecError(EventmailError, ValueError):
    """A record could not be decoded or encoded; the message names the field when one is at fault."""

    def __init__(self, message: str, *, field: str | None = None) -> None:
        self.field = field
        super().__init__(f"{field}: {message}" if field else message)


class RuleError(EventmailError, ValueError):
    """A rule document is invalid; the message names the rule and the field."""


class SecretError(EventmailError, ValueError):
    """A secret could not be encrypted, decrypted or resolved (the secret itself is never shown)."""


class MailError(EventmailError):
    """Rendering, building or sending a mail failed."""


def describe_validation(exc: Exception) -> tuple[str, str]:
    """(field path, message) of the first problem of a pydantic ``ValidationError``."""
    errors = getattr(exc, "errors", None)
    if not callable(errors):
        return "", str(exc)
    first = errors()[0]
    path = ".".join(str(part) for part in first.get("loc", ()))
    return path, str(first.get("msg", exc))
