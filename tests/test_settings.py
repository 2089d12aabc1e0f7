"""Settings: environment (with nesting and JSON maps) over a YAML file over defaults; a bad setting
is one clear error naming it; secrets never show."""

from __future__ import annotations

from pathlib import Path

import pytest

from consumer.errors import SettingsError
from consumer.observability.logging import librdkafka_logger
from consumer.pipeline.runner import outcome_producer_config
from consumer.settings import Encryption, load_settings


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for key in list(os.environ):
        if key.startswith("EVENTMAIL_"):
            monkeypatch.delenv(key)


def test_defaults_follow_the_contract() -> None:
    s = load_settings()
    assert s.kafka.bootstrap_servers == "localhost:9092"
    assert s.group_id == "eventmail"
    assert (s.topics.lms, s.topics.call_logic, s.topics.rules) == (
        "lms.events",
        "calllogic.events",
        "eventmail.rules",
    )
    assert (s.topics.outcomes, s.topics.alerts, s.topics.dlq) == (
        "eventmail.outcomes",
        "eventmail.alerts",
        "eventmail.dlq",
    )
    assert s.alerts.connection == "default"
    assert s.schema_registry.url is None


def test_environment_with_nesting_and_json(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EVENTMAIL_KAFKA__BOOTSTRAP_SERVERS", "k1:9092,k2:9092")
    monkeypatch.setenv("EVENTMAIL_KAFKA__EXTRA", '{"security.protocol": "SASL_SSL", "sasl.password": "pw"}')
    monkeypatch.setenv("EVENTMAIL_TOPICS__LMS", "lms.prod")
    monkeypatch.setenv(
        "EVENTMAIL_ESP_CONNECTIONS",
        '{"default": {"host": "smtp.example.com", "port": 465, "encryption": "ssl",'
        ' "login": "u", "password": "s3cr3t"}}',
    )
    monkeypatch.setenv("EVENTMAIL_USERS", '{"u-1": "ops@example.com"}')
    s = load_settings()
    assert s.kafka_config() == {
        "bootstrap.servers": "k1:9092,k2:9092",
        "security.protocol": "SASL_SSL",
        "sasl.password": "pw",
        "logger": librdkafka_logger(),  # librdkafka's lines through the service's logging
    }
    assert s.topics.lms == "lms.prod"
    esp = s.esp_connections["default"]
    assert esp.encryption is Encryption.SSL
    assert esp.password is not None
    assert esp.password.get_secret_value() == "s3cr3t"
    assert "s3cr3t" not in repr(s)
    assert "sasl.password" not in repr(s)
    assert s.users == {"u-1": "ops@example.com"}


def test_yaml_file_and_environment_wins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "eventmail.yaml"
    config.write_text("group_id: from-file\ntopics:\n  dlq: file.dlq\n  outcomes: file.outcomes\n")
    monkeypatch.setenv("EVENTMAIL_TOPICS__OUTCOMES", "env.outcomes")
    s = load_settings(config)
    assert s.group_id == "from-file"
    assert s.topics.dlq == "file.dlq"
    assert s.topics.outcomes == "env.outcomes"


@pytest.mark.parametrize(
    ("name", "value", "named"),
    [
        ("EVENTMAIL_HTTP__PORT", "not-a-port", "EVENTMAIL_HTTP__PORT"),
        ("EVENTMAIL_PIPELINE__MAX_IN_FLIGHT", "0", "EVENTMAIL_PIPELINE__MAX_IN_FLIGHT"),
        ("EVENTMAIL_LOG_LEVEL", "LOUD", "EVENTMAIL_LOG_LEVEL"),
        ("EVENTMAIL_ESP_CONNECTIONS", '{"default": {"host": "h", "port": 70000}}', "PORT"),
    ],
)
def test_a_bad_setting_names_itself(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str, named: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError) as info:
        load_settings()
    message = str(info.value)
    assert named in message
    assert "\n" not in message


def test_malformed_json_is_a_settings_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EVENTMAIL_USERS", "{not json")
    with pytest.raises(SettingsError, match=r"^EVENTMAIL_USERS: not valid JSON$"):
        load_settings()


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="no such file"):
        load_settings(tmp_path / "absent.yaml")


def test_settings_are_frozen() -> None:
    s = load_settings()
    with pytest.raises(ValueError, match="frozen"):
        s.group_id = "other"  # type: ignore[misc]


def test_the_outcome_producer_lingers_as_configured(monkeypatch: pytest.MonkeyPatch) -> None:
    config = outcome_producer_config(load_settings())
    assert config["linger.ms"] == 5.0  # outcomes answered together share a produce request
    assert config["bootstrap.servers"] == "localhost:9092"
    monkeypatch.setenv("EVENTMAIL_PIPELINE__OUTCOME_LINGER_MS", "0")
    monkeypatch.setenv("EVENTMAIL_KAFKA__EXTRA", '{"linger.ms": 50}')
    assert outcome_producer_config(load_settings())["linger.ms"] == 0.0  # the setting wins over extra
    monkeypatch.setenv("EVENTMAIL_PIPELINE__OUTCOME_LINGER_MS", "-1")
    with pytest.raises(SettingsError, match="OUTCOME_LINGER_MS"):
        load_settings()
