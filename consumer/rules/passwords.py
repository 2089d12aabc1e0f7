"""The forms a rule's password takes, and what of each may be shown (no key, no rule model needed).

- ``enc:<Fernet token>``: encrypted with the deployment's ``EVENTMAIL_SECRET_KEY``;
- ``secret:NAME``: a reference to ``EVENTMAIL_SECRETS[NAME]``;
- anything else: clear text (accepted only in rule files).

Sealing and opening passwords is :mod:`consumer.rules.secrets`' work; this module only tells the
forms apart, so that the rule model can check and display them without depending on it.
"""

from __future__ import annotations

import re
from enum import StrEnum

from pydantic import SecretStr

ENC_PREFIX = "enc:"
SECRET_PREFIX = "secret:"  # noqa: S105 (a prefix, not a password)
SECRET_NAME = re.compile(r"[A-Za-z0-9_.-]{1,128}")
MASK = "***"


class PasswordKind(StrEnum):
    ENCRYPTED = "enc"
    SECRET = "secret"  # noqa: S105
    CLEAR = "clear"


def password_kind(value: str) -> PasswordKind:
    if value.startswith(ENC_PREFIX):
        return PasswordKind.ENCRYPTED
    if value.startswith(SECRET_PREFIX):
        return PasswordKind.SECRET
    return PasswordKind.CLEAR


def secret_name(value: str) -> str:
    """NAME of a ``secret:NAME`` password."""
    return value[len(SECRET_PREFIX) :]


def display_password(password: SecretStr | None) -> str | None:
    """What may be shown of a password: ``enc:…``, ``secret:NAME`` or ``***``."""
    if password is None:
        return None
    value = password.get_secret_value()
    kind = password_kind(value)
    if kind is PasswordKind.ENCRYPTED:
        return f"{ENC_PREFIX}…"
    if kind is PasswordKind.SECRET:
        return value
    return MASK
