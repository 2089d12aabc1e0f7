"""Mail outcomes of ``eventmail run`` that only particular servers produce, on real parts (the
broker, aiosmtpd servers, a private CA): a rule's manual connection trusting its own CA file, a
partial recipient refusal that is still a ``sent`` outcome saying who was refused, and the
``manual-<hash>`` metric label that tells two manual servers apart."""

from __future__ import annotations

from pathlib import Path

from consumer.mail.params import manual_label
from consumer.outcomes.model import OutcomeStatus
from tests.factories import make_event
from tests.pipeline_support import apply_rules, publish, rule_doc, wait_outcomes
from tests.support.kafka import TopicFactory
from tests.support.service import Deployment, ServiceProcess
from tests.support.smtp import CertificateAuthority, SMTPServerFactory


def test_manual_ca_file_partial_refusal_and_per_server_labels(
    kafka_bootstrap: str,
    topic_factory: TopicFactory,
    smtp_server_factory: SMTPServerFactory,
    smtp_ca: CertificateAuthority,
    tmp_path: Path,
) -> None:
    deployment = Deployment.create(kafka_bootstrap, topic_factory, partitions=1)
    private = smtp_server_factory("ssl", ca=smtp_ca)  # trusted only through the rule's ca_file
    picky = smtp_server_factory("reject_rcpt", reject_rcpt=["gone@example.com"])
    manual_tls = {
        "type": "manual",
        "host": "localhost",
        "port": private.port,
        "encryption": "ssl",
        "ca_file": str(smtp_ca.ca_pem),
    }
    manual_plain = {"type": "manual", "host": picky.host, "port": picky.port, "encryption": "none"}
    apply_rules(
        deployment,
        tmp_path,
        rule_doc("own-ca", product_id="p-ca", action={"connection": manual_tls}),
        rule_doc(
            "partial",
            product_id="p-partial",
            action={
                "connection": manual_plain,
                "recipients": [{"email": "ops@example.com"}, {"email": "gone@example.com"}],
            },
        ),
    )
    service = ServiceProcess("run", deployment.env(), tmp_path).start()
    try:
        service.wait_ready()
        publish(deployment, [make_event(product_id="p-ca"), make_event(product_id="p-partial")])
        got = wait_outcomes(deployment, lambda o: len(o) >= 2)
        tls_label, plain_label = manual_label("localhost", private.port), manual_label(picky.host, picky.port)
        assert tls_label != plain_label
        for label in (tls_label, plain_label):
            service.wait_metric("eventmail_mails_sent_total", lambda v: v == 1, {"connection": label})
        assert service.terminate() == 0
    finally:
        service.stop()
    by_rule = {o.rule_id: o for o in got}
    assert by_rule["own-ca"].status is OutcomeStatus.SENT, by_rule["own-ca"].error
    [secure] = private.messages
    assert secure.tls == "ssl"
    partial = by_rule["partial"]
    assert partial.status is OutcomeStatus.SENT
    assert partial.error is not None
    assert partial.error.startswith("some recipients refused: gone@example.com: 550")
    [received] = picky.messages
    assert received.rcpt_tos == ["ops@example.com"]
