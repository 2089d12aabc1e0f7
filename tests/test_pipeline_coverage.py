"""One ``eventmail run`` against every trigger of both platforms, every filter type, ESP and manual
connections (STARTTLS with AUTH and a ``secret:NAME`` password, implicit TLS) and every content type.
The mail at the server and its outcome are compared with what the rule asked for."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from consumer.events.triggers import CALL_LOGIC_TRIGGERS, LMS_TRIGGERS, Platform
from consumer.outcomes.model import OutcomeStatus
from tests.factories import make_event
from tests.pipeline_support import apply_rules, esp, publish, rule_doc, wait_outcomes
from tests.support.kafka import TopicFactory
from tests.support.service import Deployment, ServiceProcess
from tests.support.smtp import CertificateAuthority, SMTPServerFactory


def _filtered(rule_id: str, filters: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return rule_doc(
        rule_id,
        product_id=f"p-{rule_id}",
        filters=filters,
        action={"subject": f"{rule_id} {{{{ lead_id }}}}"},
        **extra,
    )


# rule -> (filters, events that pass, events that do not); events differ only in the filtered field.
FILTER_CASES: dict[str, tuple[dict[str, Any], list[dict[str, Any]], list[dict[str, Any]]]] = {
    "f-method": ({"method": "FORM"}, [{"method": "FORM"}], [{"method": "POST"}, {"method": None}]),
    "f-strategy": (
        {"tracking_strategy": "pingback_only"},
        [{"tracking_strategy": "pingback"}],
        [{"tracking_strategy": "direct_sold"}],
    ),
    "f-publishers": (
        {"publishers": {"include": ["pub-1", "pub-2"]}},
        [{"publisher_id": "pub-1"}, {"publisher_id": "pub-2"}],
        [{"publisher_id": "pub-3"}, {"publisher_id": None}],
    ),
    "f-channels": (
        {"channels": {"exclude": ["ch-9"]}},
        [{"channel_id": "ch-1"}, {"channel_id": None}],
        [{"channel_id": "ch-9"}],
    ),
    "f-sources": ({"sources": {"include": ["src-2"]}}, [{"source_id": "src-2"}], [{"source_id": "src-1"}]),
    "f-buyers": ({"buyers": {"include": ["b-1"]}}, [{"buyer_id": "b-1"}], [{"buyer_id": "b-2"}]),
    "f-campaigns": ({"campaigns": {"exclude": ["c-3"]}}, [{"campaign_id": "c-1"}], [{"campaign_id": "c-3"}]),
    "f-pingtrees": (
        {"pingtrees": {"include": ["pt-7"]}},
        [{"pingtree_id": "pt-7"}],
        [{"pingtree_id": "pt-1"}],
    ),
    "f-gt-zero": ({"price": {"op": "gt_zero"}}, [{"price": 0.01}], [{"price": 0.0}, {"price": None}]),
    "f-gte": ({"price": {"op": "gte", "value": 10}}, [{"price": 10.0}], [{"price": 9.99}]),
    "f-lt": ({"price": {"op": "lt", "value": 5}}, [{"price": 4.5}], [{"price": 5.0}]),
    "f-range": ({"price": {"op": "range", "min": 10, "max": 20}}, [{"price": 20.0}], [{"price": 20.5}]),
}


def test_triggers_filters_connections_and_content_types(
    kafka_bootstrap: str,
    topic_factory: TopicFactory,
    smtp_server_factory: SMTPServerFactory,
    smtp_ca: CertificateAuthority,
    tmp_path: Path,
) -> None:
    deployment = Deployment.create(kafka_bootstrap, topic_factory)
    plain = smtp_server_factory("plain")
    ssl_server = smtp_server_factory("ssl", ca=smtp_ca)
    starttls_auth = smtp_server_factory(
        "auth", tls="starttls", ca=smtp_ca, require_starttls=True, users={"relay": "s3cret-pw"}
    )
    deployment.extra_env.update(
        {
            "EVENTMAIL_ESP_CONNECTIONS": json.dumps(
                {"default": esp(plain), "secure": esp(ssl_server, encryption="ssl", host="localhost")}
            ),
            "EVENTMAIL_SECRETS": json.dumps({"relay-pw": "s3cret-pw"}),
            "EVENTMAIL_SMTP__CA_FILE": str(smtp_ca.ca_pem),
        }
    )
    rules = [
        rule_doc(
            "all-lms",
            product_id="p-lms",
            triggers=list(LMS_TRIGGERS),
            action={"subject": "lms {{ trigger }} {{ lead_id }}"},
        ),
        rule_doc(
            "all-cl",
            platform="call_logic",
            product_id="p-cl",
            triggers=list(CALL_LOGIC_TRIGGERS),
            action={"subject": "cl {{ trigger }} {{ lead_id }}"},
        ),
        rule_doc(
            "pools",
            platform="call_logic",
            product_id="p-pools",
            triggers=["amd"],
            filters={"call_tracking_pools": {"include": ["pool-a"]}},
            action={"subject": "pools {{ lead_id }}"},
        ),
        *[_filtered(rule_id, case[0]) for rule_id, case in FILTER_CASES.items()],
        rule_doc(
            "html",
            product_id="p-html",
            action={
                "connection": {"type": "esp", "name": "secure"},
                "content_type": "html",
                "subject": "html {{ lead_id }}",
                "body": "<h1>Lead {{ lead_id }}</h1><p>{{ data.note }}</p>",
            },
        ),
        rule_doc(
            "all-types",
            product_id="p-all",
            action={
                "connection": {
                    "type": "manual",
                    "host": "localhost",
                    "port": starttls_auth.port,
                    "encryption": "tls",
                    "login": "relay",
                    "password": "secret:relay-pw",
                },
                "content_type": "all",
                "use_twig": True,
                "subject": "all {{ lead_id }}",
                "body": "<p>{% if price > 10 %}High{% else %}Low{% endif %} {{ price|number(2) }}</p>",
            },
        ),
    ]
    apply_rules(deployment, tmp_path, *rules)

    expected: dict[str, str] = {}  # subject -> event id
    events = []
    for platform, triggers, product, prefix in (
        (Platform.LMS, LMS_TRIGGERS, "p-lms", "lms"),
        (Platform.CALL_LOGIC, CALL_LOGIC_TRIGGERS, "p-cl", "cl"),
    ):
        for trigger in triggers:
            event = make_event(platform, trigger, product_id=product, lead_id=f"{prefix}-{trigger}")
            events.append(event)
            expected[f"{prefix} {trigger} {prefix}-{trigger}"] = event.event_id
    pool_hit = make_event(
        Platform.CALL_LOGIC, "amd", product_id="p-pools", lead_id="pool-hit", call_tracking_pool_id="pool-a"
    )
    pool_miss = make_event(
        Platform.CALL_LOGIC, "amd", product_id="p-pools", lead_id="pool-miss", call_tracking_pool_id="pool-b"
    )
    events += [pool_hit, pool_miss]
    expected["pools pool-hit"] = pool_hit.event_id
    for rule_id, (_, passing, failing) in FILTER_CASES.items():
        for i, fields in enumerate(passing):
            event = make_event(product_id=f"p-{rule_id}", lead_id=f"{rule_id}-pass-{i}", **fields)
            events.append(event)
            expected[f"{rule_id} {rule_id}-pass-{i}"] = event.event_id
        for i, fields in enumerate(failing):
            events.append(make_event(product_id=f"p-{rule_id}", lead_id=f"{rule_id}-fail-{i}", **fields))
    html_event = make_event(product_id="p-html", lead_id="H1", data={"note": "<script>x</script>"})
    all_event = make_event(product_id="p-all", lead_id="A1", price=12.345)
    events += [html_event, all_event]

    service = ServiceProcess("run", deployment.env(), tmp_path).start()
    try:
        service.wait_ready()
        publish(deployment, events)
        plain.wait_for(len(expected), timeout=90)
        ssl_server.wait_for(1, timeout=60)
        starttls_auth.wait_for(1, timeout=60)
        got = wait_outcomes(deployment, lambda o: len(o) >= len(expected) + 2)
        assert service.terminate() == 0
    finally:
        service.stop()

    assert sorted(m.subject or "" for m in plain.messages) == sorted(expected)
    assert {o.status for o in got} == {OutcomeStatus.SENT}
    by_event = {o.event_id: o for o in got}
    for subject, event_id in expected.items():
        assert by_event[event_id].subject == subject

    (html_mail,) = ssl_server.messages
    assert html_mail.message.get_content_type() == "text/html"
    assert "&lt;script&gt;x&lt;/script&gt;" in html_mail.message.get_content()
    assert html_mail.tls == "ssl"

    (all_mail,) = starttls_auth.messages
    assert all_mail.message.get_content_type() == "multipart/alternative"
    text_part, html_part = all_mail.message.iter_parts()
    assert text_part.get_content().strip() == "High 12.35"
    assert html_part.get_content().strip() == "<p>High 12.35</p>"
    assert all_mail.tls == "starttls"
    assert all_mail.auth_login == "relay"
    assert by_event[all_event.event_id].connection == f"manual:localhost:{starttls_auth.port}"
