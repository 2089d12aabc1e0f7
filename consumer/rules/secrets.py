"""Passwords of manual SMTP connections: sealing them for the rules topic and opening them to send.

A rule's password takes one of three forms:

- ``enc:<Fernet token>``: encrypted with the deployment's ``EVENTMAIL_SECRET_KEY`` (what
  ``eventmail rules apply`` writes for a clear-text password);
- ``secret:NAME``: a reference to ``EVENTMAIL_SECRETS[NAME]``, resolved when a mail is sent;
- anything else: clear text, accepted only in rule files; a record on the topic holding one is invalid.

Only :class:`PasswordResolver` turns a password into clear text, and only for the mail transport. No
function here logs, prints or puts a password (clear or sealed) into an error message; displays use
:func:`display_password`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from cryptography.fernet import Fernet, InvalidToken
from pydantic import SecretStr

from consumer.errors import SecretError
from consumer.rules.model import ManualConnection, Rule
from consumer.rules.passwords import (
    ENC_PREFIX,
    MASK,
    SECRET_NAME,
    SECRET_PREFIX,
    PasswordKind,
    display_password,
    password_kind,
    secret_name,
)

if TYPE_CHECKING:
    from consumer.settings import Settings

__all__ = [
    "ENC_PREFIX",
    "MASK",
    "SECRET_NAME",
    "SECRET_PREFIX",
    "PasswordKind",
    "PasswordResolver",
    "decrypt_password",
    "display_password",
    "encrypt_password",
    "has_clear_password",
    "password_kind",
    "seal_rule",
    "secret_name",
    "stored_password_problem",
]


def fernet(secret_key: SecretStr | None) -> Fernet:
    if secret_key is None:
        raise SecretError("EVENTMAIL_SECRET_KEY is not set: it is needed to encrypt or decrypt passwords")
    try:
        return Fernet(secret_key.get_secret_value().encode())
    except (ValueError, TypeError):
        raise SecretError(
            "EVENTMAIL_SECRET_KEY is not a valid Fernet key (32 url-safe base64-encoded bytes)"
        ) from None


def encrypt_password(clear: SecretStr, secret_key: SecretStr | None) -> SecretStr:
    """``enc:<token>`` of a clear-text password."""
    token = fernet(secret_key).encrypt(clear.get_secret_value().encode())
    return SecretStr(ENC_PREFIX + token.decode("ascii"))


def decrypt_password(sealed: SecretStr, secret_key: SecretStr | None) -> SecretStr:
    """The clear text of an ``enc:`` password."""
    value = sealed.get_secret_value()
    if password_kind(value) is not PasswordKind.ENCRYPTED:
        raise SecretError("not an enc: password")
    try:
        clear = fernet(secret_key).decrypt(value[len(ENC_PREFIX) :].encode("ascii"))
        return SecretStr(clear.decode("utf-8"))
    except (InvalidToken, UnicodeError):
        raise SecretError(
            "the enc: password cannot be decrypted with this deployment's EVENTMAIL_SECRET_KEY"
        ) from None


def stored_password_problem(
    password: SecretStr,
    *,
    stored: bool,
    secret_key: SecretStr | None,
    check_key: bool,
    secret_names: frozenset[str] | None,
) -> str | None:
    """Why a password cannot be used in this context, or None.

    ``stored``: the rule came from the topic, where clear text is invalid. ``check_key``: an ``enc:``
    password must decrypt with ``secret_key``. ``secret_names``: when given, ``secret:NAME`` must name one.
    """
    value = password.get_secret_value()
    kind = password_kind(value)
    if kind is PasswordKind.CLEAR:
        if stored:
            return (
                "clear-text password on the rules topic; publish with `eventmail rules apply`, "
                "which encrypts it"
            )
        return None
    if kind is PasswordKind.SECRET:
        name = secret_name(value)
        if secret_names is not None and name not in secret_names:
            return f"no secret named {name!r} in this deployment (EVENTMAIL_SECRETS)"
        return None
    if check_key:
        try:
            decrypt_password(password, secret_key)
        except SecretError as exc:
            return str(exc)
    return None


def seal_rule(rule: Rule, secret_key: SecretStr | None) -> Rule:
    """The rule with a clear-text manual password replaced by ``enc:<token>`` (other forms unchanged)."""
    connection = rule.action.connection
    if connection.type != "manual" or connection.password is None:
        return rule
    if password_kind(connection.password.get_secret_value()) is not PasswordKind.CLEAR:
        return rule
    sealed = connection.model_copy(update={"password": encrypt_password(connection.password, secret_key)})
    action = rule.action.model_copy(update={"connection": sealed})
    return rule.model_copy(update={"action": action})


def has_clear_password(rule: Rule) -> bool:
    connection = rule.action.connection
    return (
        connection.type == "manual"
        and connection.password is not None
        and password_kind(connection.password.get_secret_value()) is PasswordKind.CLEAR
    )


class PasswordResolver:
    """Gives the mail transport the clear password of a manual connection (None: no authentication).

    Raises :class:`SecretError` (naming the secret, never showing it) when it cannot.
    """

    def __init__(self, settings: Settings) -> None:
        self._secret_key = settings.secret_key
        self._secrets = settings.secrets
        self._fernet: Fernet | None = None

    def resolve(self, connection: ManualConnection) -> SecretStr | None:
        password = connection.password
        if password is None:
            return None
        value = password.get_secret_value()
        kind = password_kind(value)
        if kind is PasswordKind.SECRET:
            name = secret_name(value)
            found = self._secrets.get(name)
            if found is None:
                raise SecretError(f"no secret named {name!r} in this deployment (EVENTMAIL_SECRETS)")
            return found
        if kind is PasswordKind.ENCRYPTED:
            if self._fernet is None:
                self._fernet = fernet(self._secret_key)
            try:
                return SecretStr(self._fernet.decrypt(value[len(ENC_PREFIX) :].encode("ascii")).decode())
            except (InvalidToken, UnicodeError):
                raise SecretError(
                    "the enc: password cannot be decrypted with this deployment's EVENTMAIL_SECRET_KEY"
                ) from None
        # Clear text only exists in rules validated from files (never from the topic).
        return password

    __call__ = resolve


def resolve_password(connection: ManualConnection, settings: Settings) -> SecretStr | None:
    """One-off form of :meth:`PasswordResolver.resolve`."""
    return PasswordResolver(settings).resolve(connection)
