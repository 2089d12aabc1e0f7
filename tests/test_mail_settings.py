"""SMTP settings that stop start-up when they are wrong: a CA file that is missing or not PEM (for
every connection or for one ESP connection), an EHLO name that is not a host name, an unknown
special-use domain. ``eventmail run`` exits 1 at once with one line naming the setting and the file,
instead of starting, reporting ready and failing every TLS mail later."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.kafka import TopicFactory
from tests.support.service import Deployment
from tests.support.smtp import CertificateAuthority

EVENTMAIL = Path(sys.executable).with_name("eventmail")


def run_service(env: dict[str, str], deployment: Deployment) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("EVENTMAIL_")}
    full = {**clean, **deployment.env(), "EVENTMAIL_HTTP__PORT": "0", **env}
    # Every topic exists: a service that starts runs until stopped, and the timeout is the failure.
    return subprocess.run(
        [str(EVENTMAIL), "run"], env=full, capture_output=True, text=True, timeout=45, check=False
    )


@pytest.mark.parametrize(
    ("setting", "value", "problem"),
    [
        ("EVENTMAIL_SMTP__CA_FILE", "/no/such.pem", "no such CA file: /no/such.pem"),
        ("EVENTMAIL_SMTP__CA_FILE", "NOT_PEM", "cannot load the CA file"),
        ("EVENTMAIL_ESP_CONNECTIONS", "ESP_MISSING", "no such CA file: /no/relay-ca.pem"),
    ],
)
def test_a_bad_ca_file_stops_start_up_naming_setting_and_file(
    kafka_bootstrap: str, topic_factory: TopicFactory, tmp_path: Path, setting: str, value: str, problem: str
) -> None:
    if value == "NOT_PEM":
        value = str(tmp_path / "not-a-ca.pem")
        Path(value).write_text("this is not a certificate\n")
    if value == "ESP_MISSING":
        value = json.dumps({"relay": {"host": "relay.example.com", "ca_file": "/no/relay-ca.pem"}})
    result = run_service({setting: value}, Deployment.create(kafka_bootstrap, topic_factory, partitions=1))
    assert result.returncode == 1, result.stderr
    [line] = result.stderr.strip().splitlines()
    expected = (
        "EVENTMAIL_ESP_CONNECTIONS__RELAY__CA_FILE" if setting == "EVENTMAIL_ESP_CONNECTIONS" else setting
    )
    assert line.startswith(f"eventmail: {expected}: "), line
    assert problem in line


def test_a_good_ca_file_and_smtp_settings_load(smtp_ca: CertificateAuthority) -> None:
    from consumer.settings import load_settings

    settings = load_settings(
        smtp={
            "ca_file": str(smtp_ca.ca_pem),
            "ehlo_hostname": "mailer.example.com",
            "allowed_special_use_domains": ["Test"],
        }
    )
    assert settings.smtp.ca_file == str(smtp_ca.ca_pem)
    assert settings.smtp.allowed_special_use_domains == ("test",)


@pytest.mark.parametrize(
    ("smtp", "message"),
    [
        ({"ehlo_hostname": "bad name"}, "EVENTMAIL_SMTP__EHLO_HOSTNAME"),
        ({"allowed_special_use_domains": ["example"]}, "'example' is not a special-use domain"),
    ],
)
def test_bad_smtp_settings_are_named(smtp: dict[str, object], message: str) -> None:
    from consumer.errors import SettingsError
    from consumer.settings import load_settings

    with pytest.raises(SettingsError, match=message):
        load_settings(smtp=smtp)
