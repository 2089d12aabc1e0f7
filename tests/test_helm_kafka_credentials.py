"""The chart takes Kafka credentials from Secrets, mounted as files (never in the environment), with
one SASL user per component."""

from __future__ import annotations

from pathlib import Path

from tests.test_helm import container, helm, one, render  # noqa: F401 (helm: a fixture)


def test_each_component_mounts_its_own_kafka_secret_as_files(helm: Path) -> None:  # noqa: F811
    manifests = render(
        helm,
        "--set",
        "consumer.kafkaCredentials.secretName=kafka-run",
        "--set",
        "consumer.kafkaCredentials.username=eventmail-run",
        "--set",
        "aggregator.kafkaCredentials.secretName=kafka-aggregate",
        "--set",
        "aggregator.kafkaCredentials.username=eventmail-aggregate",
        "--set",
        "aggregator.kafkaCredentials.mountPath=/run/kafka/",
    )
    for component, secret, user, path in (
        ("consumer", "kafka-run", "eventmail-run", "/etc/eventmail/kafka"),
        ("aggregator", "kafka-aggregate", "eventmail-aggregate", "/run/kafka/"),
    ):
        deployment = one(manifests, "Deployment", component)
        pod = deployment["spec"]["template"]["spec"]
        volume = next(v for v in pod["volumes"] if v["name"] == "kafka-credentials")
        assert volume["secret"]["secretName"] == secret
        main = container(deployment)
        mount = next(m for m in main["volumeMounts"] if m["name"] == "kafka-credentials")
        assert mount == {"name": "kafka-credentials", "mountPath": path, "readOnly": True}
        env = {e["name"]: e.get("value") for e in main["env"]}
        assert env["EVENTMAIL_KAFKA__SASL_USERNAME"] == user
        assert env["EVENTMAIL_KAFKA__SASL_PASSWORD_FILE"] == f"{path.rstrip('/')}/password"


def test_no_kafka_credentials_no_volume(helm: Path) -> None:  # noqa: F811
    manifests = render(helm)
    for component in ("consumer", "aggregator"):
        main = container(one(manifests, "Deployment", component))
        assert not any(m["name"] == "kafka-credentials" for m in main["volumeMounts"])
        assert not any(e["name"].startswith("EVENTMAIL_KAFKA__SASL") for e in main["env"])
