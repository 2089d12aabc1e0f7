"""Passwords of manual connections: sealed for the topic, opened only for the transport, never shown."""

from __future__ import annotations

import json
import logging

import pytest
from cryptography.fernet import Fernet
from pydantic import SecretStr

from consumer.errors import SecretError
from consumer.rules.checks import RuleContext
from consumer.rules.codec import decode_rule, encode_rule, rule_version
from consumer.rules.model import ManualConnection
from consumer.rules.secrets import (
    PasswordResolver,
    decrypt_password,
    display_password,
    encrypt_password,
    has_clear_password,
    resolve_password,
    seal_rule,
)
from consumer.rules.validation import RuleValidationError, validate_rule
from consumer.settings import Settings
from tests.test_rules_model import CONTEXT, manual

CLEAR = "hunter2-very-secret"
KEY = SecretStr(Fernet.generate_key().decode())


def settings(**extra: object) -> Settings:
    return Settings(secret_key=KEY, secrets={"relay": SecretStr("from-the-vault")}, **extra)  # type: ignore[arg-type]


def connection_of(rule: object) -> ManualConnection:
    connection = rule.action.connection  # type: ignore[attr-defined]
    assert isinstance(connection, ManualConnection)
    return connection


def test_seal_encrypts_a_clear_password_and_the_resolver_opens_it() -> None:
    rule = validate_rule(manual(login="u", password=CLEAR), CONTEXT)
    assert has_clear_password(rule)
    sealed = seal_rule(rule, KEY)
    password = connection_of(sealed).password
    assert password is not None
    assert password.get_secret_value().startswith("enc:")
    assert CLEAR not in password.get_secret_value()
    assert not has_clear_password(sealed)
    opened = PasswordResolver(settings()).resolve(connection_of(sealed))
    assert opened is not None
    assert opened.get_secret_value() == CLEAR
    assert decrypt_password(password, KEY).get_secret_value() == CLEAR


def test_secret_references_stay_as_they_are_and_resolve_from_the_deployment() -> None:
    rule = validate_rule(manual(login="u", password="secret:relay"), CONTEXT)
    assert seal_rule(rule, None) is rule  # no key needed
    resolved = resolve_password(connection_of(rule), settings())
    assert resolved is not None
    assert resolved.get_secret_value() == "from-the-vault"
    missing = validate_rule(manual(login="u", password="secret:other"), CONTEXT)
    with pytest.raises(SecretError, match="no secret named 'other'"):
        resolve_password(connection_of(missing), settings())


def test_no_password_means_no_authentication() -> None:
    rule = validate_rule(manual(), CONTEXT)
    assert resolve_password(connection_of(rule), settings()) is None


def test_sealing_needs_a_valid_key() -> None:
    rule = validate_rule(manual(login="u", password=CLEAR), CONTEXT)
    with pytest.raises(SecretError, match="EVENTMAIL_SECRET_KEY is not set"):
        seal_rule(rule, None)
    with pytest.raises(SecretError, match="not a valid Fernet key"):
        seal_rule(rule, SecretStr("short"))


def test_a_token_of_another_key_does_not_open() -> None:
    other = encrypt_password(SecretStr(CLEAR), SecretStr(Fernet.generate_key().decode()))
    with pytest.raises(SecretError, match="cannot be decrypted") as info:
        decrypt_password(other, KEY)
    assert CLEAR not in str(info.value)
    assert other.get_secret_value() not in str(info.value)


def test_the_topic_rejects_clear_text_and_undecryptable_passwords() -> None:
    stored = RuleContext.for_topic(settings())
    clear = validate_rule(manual(login="u", password=CLEAR), CONTEXT)
    document = clear.model_dump(mode="json", exclude_none=True)
    document["action"]["connection"]["password"] = CLEAR
    raw = json.dumps(document).encode()
    with pytest.raises(RuleValidationError) as info:
        decode_rule(b"r-1", raw, stored)
    assert "clear-text password on the rules topic" in str(info.value)
    assert CLEAR not in str(info.value)

    foreign = encrypt_password(SecretStr(CLEAR), SecretStr(Fernet.generate_key().decode()))
    document["action"]["connection"]["password"] = foreign.get_secret_value()
    with pytest.raises(RuleValidationError, match="cannot be decrypted with this deployment"):
        decode_rule(b"r-1", json.dumps(document).encode(), stored)

    document["action"]["connection"]["password"] = "secret:unknown"
    with pytest.raises(RuleValidationError, match="no secret named 'unknown'"):
        decode_rule(b"r-1", json.dumps(document).encode(), stored)


def test_encoding_refuses_clear_text_and_round_trips_sealed_rules() -> None:
    rule = validate_rule(manual(login="u", password=CLEAR), CONTEXT)
    with pytest.raises(SecretError, match="must be sealed"):
        encode_rule(rule)
    sealed = seal_rule(rule, KEY)
    raw = encode_rule(sealed)
    assert CLEAR.encode() not in raw
    back = decode_rule(b"r-1", raw, RuleContext.for_topic(settings(esp_connections={})))
    assert back == sealed
    assert rule_version(back) == rule_version(sealed)


def test_passwords_never_show_in_repr_dumps_or_errors(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    rule = validate_rule(manual(login="u", password=CLEAR), CONTEXT)
    sealed = seal_rule(rule, KEY)
    token = connection_of(sealed).password.get_secret_value()  # type: ignore[union-attr]
    for text in (
        repr(rule),
        str(rule),
        repr(sealed),
        json.dumps(rule.model_dump(mode="json")),
        json.dumps(sealed.model_dump(mode="json")),
        caplog.text,
    ):
        assert CLEAR not in text
        assert token not in text
    assert sealed.model_dump(mode="json")["action"]["connection"]["password"] == "enc:…"
    assert rule.model_dump(mode="json")["action"]["connection"]["password"] == "***"
    # An invalid document holding a password: the errors name the problem, not the input.
    broken = manual(login="u", password=CLEAR, port=0)
    with pytest.raises(RuleValidationError) as info:
        validate_rule(broken, CONTEXT)
    assert CLEAR not in str(info.value)


def test_display_forms() -> None:
    assert display_password(None) is None
    assert display_password(SecretStr("secret:relay")) == "secret:relay"
    assert display_password(SecretStr("enc:gAAAAA")) == "enc:…"
    assert display_password(SecretStr(CLEAR)) == "***"
