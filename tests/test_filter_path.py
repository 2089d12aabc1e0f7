"""The filter path (records that match no rule, finished without a task) on real parts: Kafka, an
SMTP server, the record processor and the pipeline on a loop of its own (the harness of
tests/test_pipeline_ownership.py). Around a record that sends mail, runs of records that match
nothing never let the committable offset pass it before its outcome is written, and the consumed
counter, whose counts of a batch are added once after it, ends with one count per record."""

from __future__ import annotations

from collections.abc import Callable

from confluent_kafka import Message
from prometheus_client import REGISTRY

from consumer.events.codec import encode_json
from tests.factories import make_event
from tests.support.smtp import SMTPServerFactory
from tests.test_pipeline_ownership import Harness, make_harness, wait_for

__all__ = ["make_harness"]  # the fixture, used by name

#: A trigger no rule of the harness has (its rule is for lead_sold).
UNMATCHED = "lead_rejected"


def consumed(trigger: str) -> float:
    labels = {"platform": "lms", "trigger": trigger}
    return REGISTRY.get_sample_value("eventmail_events_consumed_total", labels) or 0.0


def assert_held(h: Harness, mail_done: Callable[[], bool]) -> None:
    """The committable offset is 150 (the mail's) unless the mail's record is done by now."""
    tp = h.lms_tp
    committable = h.pipeline.committable({tp})
    if committable != {tp: 150}:
        assert mail_done(), f"committable {committable} passed the mail at 150 before it was done"


def record(h: Harness, offset: int, trigger: str) -> Message:
    topic, partition = h.lms_tp
    value = encode_json(make_event(trigger=trigger, lead_id=f"F{offset}"))
    return Message(topic=topic, partition=partition, offset=offset, value=value, key=b"k")


def test_finished_runs_around_a_mail_never_pass_it(
    make_harness: Callable[..., Harness], smtp_server_factory: SMTPServerFactory
) -> None:
    server = smtp_server_factory("plain", data_reply_delay=1.0)
    h = make_harness(server)
    tp = h.lms_tp
    h.assign(tp)
    before_unmatched, before_matched = consumed(UNMATCHED), consumed("lead_sold")
    h.pipeline.on_records(
        [record(h, o, UNMATCHED) for o in range(150)]
        + [record(h, 150, "lead_sold")]
        + [record(h, o, UNMATCHED) for o in range(151, 400)]
    )
    # Everything but the mail is done (400 records in steps of the release), while its DATA waits.
    wait_for(lambda: h.pipeline.backlog()[0] <= 1, 30, "the records that match nothing done")
    mail_done = lambda: h.pipeline.in_flight() == 0  # noqa: E731  (the mail is the only task)
    assert_held(h, mail_done)
    assert h.pipeline.spans()[tp] in (400 - 150, 0)
    wait_for(lambda: consumed(UNMATCHED) - before_unmatched == 399, 10, "399 unmatched events counted")
    assert consumed("lead_sold") - before_matched == 1
    # A second batch behind it, all matching nothing: still held at 150.
    h.pipeline.on_records([record(h, o, UNMATCHED) for o in range(400, 464)])
    wait_for(lambda: consumed(UNMATCHED) - before_unmatched == 463, 10, "463 unmatched events counted")
    assert_held(h, mail_done)
    wait_for(lambda: h.pipeline.backlog() == (0, 0), 30, "the mail sent")
    assert len(server.messages) == 1
    assert h.pipeline.committable({tp}) == {tp: 464}
    assert h.fatal == []


def test_off_the_loop_an_event_is_counted_at_once(make_harness: Callable[..., Harness]) -> None:
    """Without a running loop (the processor called from a plain thread) nothing defers the count."""
    h = make_harness()
    before = consumed(UNMATCHED)
    msg = record(h, 0, UNMATCHED)
    assert h.pipeline.processor.start_event(msg, h.lms_tp[0]) is None
    assert consumed(UNMATCHED) - before == 1
