"""The SMTP transport against real aiosmtpd servers: encryption, AUTH, retries, failures, the pool
under load, the circuit breaker and the rate limit."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections import Counter

import pytest
from prometheus_client import REGISTRY
from pydantic import SecretStr

from consumer.mail import (
    CircuitOpenError,
    ConnectionDroppedError,
    ConnectionParams,
    MailAddress,
    PermanentSendError,
    Rendered,
    SendResult,
    SendTimeoutError,
    TransientSendError,
    Transport,
    build_message,
)
from consumer.mail.circuit import CircuitBreaker, CircuitState
from consumer.mail.message import BuiltMessage
from consumer.mail.params import MANUAL_OTHER, MAX_MANUAL_LABELS, ManualLabels, manual_label
from consumer.settings import Encryption, EspConnection, SmtpSettings
from tests.support.smtp import CertificateAuthority, SMTPServerFactory, SMTPTestServer

FAST = SmtpSettings(
    connect_timeout_seconds=2.0,
    command_timeout_seconds=2.0,
    data_timeout_seconds=2.0,
    in_place_retries=2,
    retry_base_seconds=0.01,
    retry_max_seconds=0.05,
    circuit_failures=5,
    circuit_open_seconds=30.0,
)


def message(n: int = 1, to: str = "ops@example.com", rule: str = "r-1") -> BuiltMessage:
    return build_message(
        Rendered(f"message {n}", f"body {n}\n", None),
        sender=MailAddress("sales@example.com", "Sales"),
        to=[MailAddress(to)],
        event_id=f"ev-{n}",
        rule_id=rule,
    )


def params_for(server: SMTPTestServer, name: str, **changes: object) -> ConnectionParams:
    encryption = {"none": Encryption.NONE, "starttls": Encryption.TLS, "ssl": Encryption.SSL}[server.tls]
    base = ConnectionParams(name=name, host=server.host, port=server.port, encryption=encryption)
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


async def send(transport: Transport, params: ConnectionParams, built: BuiltMessage) -> SendResult:
    return await transport.send(params, built)


def metric(name: str, connection: str) -> float:
    return REGISTRY.get_sample_value(name, {"connection": connection}) or 0.0


async def test_plain_send_and_pooled_reuse(smtp_server: SMTPTestServer) -> None:
    params = params_for(smtp_server, "plain")
    before = metric("eventmail_smtp_send_duration_seconds_count", "plain")
    async with Transport(FAST) as transport:
        built = message(1)
        first = await transport.send(params, built.data, built.sender, built.recipients)
        second = await transport.send(params, message(2).message, "sales@example.com", ["ops@example.com"])
        assert transport.pool_size(params) == 1
    assert (first.code, first.attempts, first.accepted, first.refused) == (250, 1, ("ops@example.com",), {})
    assert first.connection == "plain"
    assert first.duration_seconds > 0
    assert second.code == 250
    received = await smtp_server.wait_for_async(2)
    assert [m.message_id for m in received] == [message(1).message_id, message(2).message_id]
    assert received[0].mail_from == "sales@example.com"
    assert received[0].rcpt_tos == ["ops@example.com"]
    assert received[0].connection == received[1].connection
    assert smtp_server.connections == 1
    assert metric("eventmail_smtp_send_duration_seconds_count", "plain") == before + 2


async def test_starttls_with_a_private_ca(
    smtp_server_factory: SMTPServerFactory, smtp_ca: CertificateAuthority
) -> None:
    server = smtp_server_factory("starttls", require_starttls=True)
    params = params_for(server, "starttls", ca_file=str(smtp_ca.ca_pem))
    async with Transport(FAST) as transport:
        result = await send(transport, params, message())
    assert result.code == 250
    [received] = await server.wait_for_async(1)
    assert received.tls == "starttls"
    assert received.tls_version is not None


async def test_implicit_tls(smtp_server_factory: SMTPServerFactory, smtp_ca: CertificateAuthority) -> None:
    server = smtp_server_factory("ssl")
    async with Transport(FAST, tls_context=lambda _: smtp_ca.client_context()) as transport:
        result = await send(transport, params_for(server, "ssl"), message())
    assert result.code == 250
    [received] = await server.wait_for_async(1)
    assert received.tls == "ssl"


@pytest.mark.parametrize("kind", ["starttls", "ssl"])
async def test_untrusted_certificates_are_refused_unless_verification_is_off(
    smtp_server_factory: SMTPServerFactory, kind: str
) -> None:
    server = smtp_server_factory(kind)
    async with Transport(FAST) as transport:
        with pytest.raises(PermanentSendError) as caught:
            await send(transport, params_for(server, f"untrusted-{kind}"), message())
        assert caught.value.reason == "tls"
        assert caught.value.attempts == 1
        assert "not trusted" in str(caught.value)
        insecure = params_for(server, f"insecure-{kind}", verify_tls=False)
        assert (await send(transport, insecure, message())).code == 250
    assert len(await server.wait_for_async(1)) == 1


async def test_starttls_required_but_not_offered_never_sends_in_clear(smtp_server: SMTPTestServer) -> None:
    params = params_for(smtp_server, "no-starttls", encryption=Encryption.TLS)
    async with Transport(FAST) as transport:
        with pytest.raises(PermanentSendError, match="does not offer STARTTLS"):
            await send(transport, params, message())
    assert smtp_server.attempts == 0


async def test_auth_success(smtp_server_factory: SMTPServerFactory) -> None:
    server = smtp_server_factory("auth", users={"mailer": "s3cret-pw"})
    params = params_for(server, "auth-ok", login="mailer", password=SecretStr("s3cret-pw"))
    async with Transport(FAST) as transport:
        assert (await send(transport, params, message())).code == 250
    [received] = await server.wait_for_async(1)
    assert received.auth_login == "mailer"


async def test_auth_failure_is_permanent_and_never_shows_the_password(
    smtp_server_factory: SMTPServerFactory,
) -> None:
    server = smtp_server_factory("auth", users={"mailer": "right"})
    params = params_for(server, "auth-bad", login="mailer", password=SecretStr("wrong-pw-123"))
    async with Transport(FAST) as transport:
        with pytest.raises(PermanentSendError) as caught:
            await send(transport, params, message())
    error = caught.value
    assert (error.reason, error.code, error.attempts) == ("auth", 535, 1)
    assert "authentication failed: 535" in str(error)
    for text in (str(error), repr(error), error.reply, repr(params), str(params)):
        assert "wrong-pw-123" not in text
    assert "password=***" in repr(params)
    assert not server.messages


@pytest.mark.parametrize(("code", "stage"), [(421, "mail"), (451, "data"), (450, "rcpt")])
async def test_temporary_failure_then_success_is_retried_and_delivered_once(
    smtp_server_factory: SMTPServerFactory, code: int, stage: str
) -> None:
    server = smtp_server_factory("flaky", fail_code=code, fail_stage=stage, fail_times=1)
    async with Transport(FAST) as transport:
        result = await send(transport, params_for(server, f"flaky-{code}"), message())
    assert (result.code, result.attempts) == (250, 2)
    received = await server.wait_for_async(1)
    assert len(received) == 1
    assert server.attempts == 2


async def test_temporary_failures_beyond_the_retries_raise_transient(
    smtp_server_factory: SMTPServerFactory,
) -> None:
    server = smtp_server_factory("flaky", fail_code=451, fail_times=None)
    async with Transport(FAST) as transport:
        with pytest.raises(TransientSendError) as caught:
            await send(transport, params_for(server, "always-451"), message())
    assert (caught.value.code, caught.value.attempts, caught.value.reason) == (451, 3, "smtp_4xx")
    assert server.attempts == 3
    assert not server.messages


async def test_permanent_rejection_is_not_retried(smtp_server_factory: SMTPServerFactory) -> None:
    server = smtp_server_factory("reject")
    async with Transport(FAST) as transport:
        with pytest.raises(PermanentSendError) as caught:
            await send(transport, params_for(server, "reject"), message())
        # the session survived the 550 (RSET) and is reused for the next transaction
        with pytest.raises(PermanentSendError):
            await send(transport, params_for(server, "reject"), message(2))
    assert (caught.value.code, caught.value.attempts, caught.value.reason) == (550, 1, "smtp_5xx")
    assert "5.7.1 Message rejected" in caught.value.reply
    assert server.attempts == 2
    assert server.connections == 1


async def test_refused_recipients_are_reported_per_address(smtp_server_factory: SMTPServerFactory) -> None:
    server = smtp_server_factory("reject_rcpt", reject_rcpt=["gone@example.com"])
    built = build_message(
        Rendered("s", "b", None),
        sender=MailAddress("sales@example.com"),
        to=[MailAddress("ops@example.com"), MailAddress("gone@example.com")],
        event_id="e",
        rule_id="r",
    )
    async with Transport(FAST) as transport:
        result = await send(transport, params_for(server, "rcpt"), built)
        assert result.accepted == ("ops@example.com",)
        assert list(result.refused) == ["gone@example.com"]
        assert result.refused["gone@example.com"].code == 550
        with pytest.raises(PermanentSendError) as caught:
            await transport.send(params_for(server, "rcpt"), built.data, built.sender, ["gone@example.com"])
    assert caught.value.refused["gone@example.com"].code == 550
    assert [m.rcpt_tos for m in await server.wait_for_async(1)] == [["ops@example.com"]]


async def test_drop_during_data_is_transient_and_the_broken_connection_is_discarded(
    smtp_server_factory: SMTPServerFactory,
) -> None:
    always = smtp_server_factory("drop")
    once = smtp_server_factory("drop", drop_times=1)
    no_retry = FAST.model_copy(update={"in_place_retries": 0})
    async with Transport(no_retry) as transport:
        with pytest.raises(ConnectionDroppedError) as caught:
            await send(transport, params_for(always, "drop"), message())
        assert isinstance(caught.value, TransientSendError)
        assert transport.pool_size(params_for(always, "drop")) == 0
    async with Transport(FAST) as transport:
        result = await send(transport, params_for(once, "drop-once"), message())
    assert result.attempts == 2
    [received] = await once.wait_for_async(1)
    assert once.connections == 2
    assert received.connection == 2


async def test_a_server_that_never_answers_times_out(smtp_server_factory: SMTPServerFactory) -> None:
    server = smtp_server_factory("silent")
    settings = FAST.model_copy(update={"connect_timeout_seconds": 0.3, "in_place_retries": 1})
    started = time.monotonic()
    async with Transport(settings) as transport:
        with pytest.raises(SendTimeoutError) as caught:
            await send(transport, params_for(server, "silent"), message())
    assert isinstance(caught.value, TransientSendError)
    assert isinstance(caught.value, TimeoutError)
    assert caught.value.attempts == 2
    assert time.monotonic() - started >= 0.6
    assert server.connections == 2


async def test_no_reply_to_the_end_of_data_times_out(smtp_server_factory: SMTPServerFactory) -> None:
    server = smtp_server_factory("hang")
    settings = FAST.model_copy(update={"data_timeout_seconds": 0.3, "in_place_retries": 0})
    started = time.monotonic()
    async with Transport(settings) as transport:
        with pytest.raises(SendTimeoutError):
            await send(transport, params_for(server, "hang"), message())
    assert time.monotonic() - started >= 0.3


async def test_a_thousand_concurrent_sends_through_eight_connections(smtp_server: SMTPTestServer) -> None:
    params = params_for(smtp_server, "load", max_connections=8)
    messages = [message(n) for n in range(1000)]
    peak = 0
    done = asyncio.Event()

    async def watch() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, smtp_server.open_connections)
            await asyncio.sleep(0.002)

    async with Transport(FAST) as transport:
        watcher = asyncio.create_task(watch())
        results = await asyncio.gather(*(send(transport, params, m) for m in messages))
        done.set()
        await watcher
        assert transport.pool_size(params) <= 8
    assert all(r.code == 250 for r in results)
    received = await smtp_server.wait_for_async(1000)
    counts = Counter(m.message_id for m in received)
    assert len(received) == 1000
    assert set(counts) == {m.message_id for m in messages}
    assert set(counts.values()) == {1}
    assert 1 <= peak <= 8
    assert smtp_server.connections <= 8
    assert len({m.connection for m in received}) <= 8


async def test_circuit_opens_after_repeated_failures_then_probes(
    smtp_server_factory: SMTPServerFactory,
) -> None:
    server = smtp_server_factory("flaky", fail_code=421, fail_stage="mail", fail_times=3)
    settings = FAST.model_copy(
        update={"in_place_retries": 0, "circuit_failures": 3, "circuit_open_seconds": 0.3}
    )
    params = params_for(server, "circuit")
    now = [100.0]
    async with Transport(settings, clock=lambda: now[0]) as transport:
        for n in range(3):
            with pytest.raises(TransientSendError) as caught:
                await send(transport, params, message(n))
            assert caught.value.code == 421
        assert metric("eventmail_smtp_circuit_open", "circuit") == 1
        with pytest.raises(CircuitOpenError) as opened:
            await send(transport, params, message(3))
        assert opened.value.attempts == 0
        assert 0 < opened.value.retry_after <= 0.3
        assert server.attempts == 3  # the open circuit did not reach the server
        now[0] += 0.29
        with pytest.raises(CircuitOpenError):  # still open just before its time
            await send(transport, params, message(3))
        now[0] += 0.02
        result = await send(transport, params, message(4))  # the half-open probe
        assert result.code == 250
        assert metric("eventmail_smtp_circuit_open", "circuit") == 0
        assert (await send(transport, params, message(5))).code == 250
    assert len(await server.wait_for_async(2)) == 2


async def test_circuit_counts_unreachable_servers(smtp_server_factory: SMTPServerFactory) -> None:
    server = smtp_server_factory("plain")
    server.stop()  # nothing listens on its port any more
    settings = FAST.model_copy(update={"in_place_retries": 1, "circuit_failures": 2})
    params = params_for(server, "down")
    async with Transport(settings) as transport:
        with pytest.raises(ConnectionDroppedError):
            await send(transport, params, message())
        with pytest.raises(CircuitOpenError, match="circuit open"):
            await send(transport, params, message())
        assert metric("eventmail_smtp_circuit_open", "down") == 1
    assert metric("eventmail_smtp_circuit_open", "down") == 0


async def test_rate_limit_spaces_sends(smtp_server: SMTPTestServer) -> None:
    params = params_for(smtp_server, "limited", rate_limit_per_second=20.0)
    started = time.monotonic()
    async with Transport(FAST) as transport:
        await asyncio.gather(*(send(transport, params, message(n)) for n in range(11)))
    assert time.monotonic() - started >= 0.5  # 10 intervals of 1/20 s after the first send
    assert len(await smtp_server.wait_for_async(11)) == 11


async def test_dead_pooled_connections_are_replaced(smtp_server: SMTPTestServer) -> None:
    params = params_for(smtp_server, "restart")
    async with Transport(FAST, noop_after_seconds=0.0) as transport:
        await send(transport, params, message(1))
        smtp_server.restart()  # the pooled session's TCP connection is gone
        result = await send(transport, params, message(2))
    assert result.attempts == 1
    assert smtp_server.connections == 2
    assert len(await smtp_server.wait_for_async(2)) == 2


async def test_idle_connections_expire_and_close_closes_everything(smtp_server: SMTPTestServer) -> None:
    settings = FAST.model_copy(update={"idle_timeout_seconds": 0.2})
    params = params_for(smtp_server, "idle")
    transport = Transport(settings)
    await asyncio.gather(*(send(transport, params, message(n)) for n in range(3)))
    assert transport.pool_size(params) >= 1
    await smtp_server.wait_until_async(
        lambda: smtp_server.open_connections == 0, timeout=5, what="idle close"
    )
    assert transport.pool_size(params) == 0
    await send(transport, params, message(4))
    await smtp_server.wait_until_async(lambda: smtp_server.open_connections == 1, what="a new connection")
    await transport.close()
    await smtp_server.wait_until_async(lambda: smtp_server.open_connections == 0, what="close")
    with pytest.raises(RuntimeError, match="closed"):
        await send(transport, params, message(5))


async def test_international_envelope_uses_smtputf8(smtp_server: SMTPTestServer) -> None:
    built = message(to="zoë@example.com")
    assert built.smtputf8
    async with Transport(FAST) as transport:
        await send(transport, params_for(smtp_server, "utf8"), built)
    [received] = await smtp_server.wait_for_async(1)
    assert received.rcpt_tos == ["zoë@example.com"]
    assert "SMTPUTF8" in [option.upper() for option in received.mail_options]


def test_connection_params() -> None:
    esp = EspConnection(
        host="smtp.example.com", port=465, encryption=Encryption.SSL, login="u", password=SecretStr("pw-1")
    )
    params = ConnectionParams.from_esp("default", esp)
    assert (params.name, params.host, params.port, params.encryption) == (
        "default",
        "smtp.example.com",
        465,
        "ssl",
    )
    assert params.max_connections == 8
    assert params.verify_tls
    assert "pw-1" not in repr(params)
    assert "pw-1" not in str(params)
    same = ConnectionParams.from_esp("default", esp)
    other_password = ConnectionParams.from_esp(
        "default", esp.model_copy(update={"password": SecretStr("pw-2")})
    )
    assert params == same
    assert hash(params) == hash(same)
    assert params != other_password
    manual = ConnectionParams.manual("smtp.example.com", 587, "tls", "u", "pw-3")
    assert manual.name == manual_label("smtp.example.com", 587)
    assert manual.name.startswith("manual-")
    assert manual.secret() == "pw-3"
    assert "pw-3" not in repr(manual)
    with pytest.raises(ValueError, match="port"):
        ConnectionParams.manual("h", 0)


def test_half_open_circuit_admits_exactly_one_probe() -> None:
    now = [0.0]
    breaker = CircuitBreaker("unit-circuit", failures=2, open_seconds=10.0, clock=lambda: now[0])
    for _ in range(2):
        assert breaker.before() is False
        breaker.failure()
    with pytest.raises(CircuitOpenError):
        breaker.before()
    now[0] = 10.5
    assert breaker.before() is True  # the probe
    with pytest.raises(CircuitOpenError):
        breaker.before()  # anyone else while the probe runs
    breaker.failure()  # the probe failed: open for another 10 s
    now[0] = 15.0
    with pytest.raises(CircuitOpenError):
        breaker.before()
    now[0] = 21.0
    assert breaker.before() is True
    breaker.success()
    assert breaker.state is CircuitState.CLOSED
    assert breaker.before() is False
    assert metric("eventmail_smtp_circuit_open", "unit-circuit") == 0


async def test_circuits_are_per_server_and_metrics_tell_manual_servers_apart(
    smtp_server_factory: SMTPServerFactory,
) -> None:
    broken, healthy = smtp_server_factory("plain"), smtp_server_factory("plain")
    broken.stop()
    settings = FAST.model_copy(update={"in_place_retries": 0, "circuit_failures": 2})
    down = ConnectionParams.manual(broken.host, broken.port, "none")
    up = ConnectionParams.manual(healthy.host, healthy.port, "none")
    assert down.name != up.name
    assert down.name.startswith("manual-")
    assert up.name.startswith("manual-")
    async with Transport(settings) as transport:
        for _ in range(2):
            with pytest.raises(ConnectionDroppedError):
                await send(transport, down, message())
        with pytest.raises(CircuitOpenError):
            await send(transport, down, message())
        # Another rule naming the same server (host, port, login) shares its circuit ...
        same_server = dataclasses.replace(down, max_connections=2, ca_file="/elsewhere.pem")
        with pytest.raises(CircuitOpenError):
            await send(transport, same_server, message())
        # ... a different server does not: its mail goes through and its gauge stays down.
        assert (await send(transport, up, message(2))).code == 250
        assert metric("eventmail_smtp_circuit_open", down.name) == 1
        assert metric("eventmail_smtp_circuit_open", up.name) == 0
        assert metric("eventmail_smtp_send_duration_seconds_count", up.name) == 1
    assert len(await healthy.wait_for_async(1)) == 1


def test_manual_labels_are_bounded() -> None:
    labels = ManualLabels(limit=8)
    given = [labels.label(f"relay-{n}.example.com", 25) for n in range(20)]
    assert given[8:] == [MANUAL_OTHER] * 12
    assert len(set(given[:8])) == 8
    assert labels.label("Relay-0.example.com", 25) == given[0] == manual_label("relay-0.example.com", 25)
    assert MAX_MANUAL_LABELS >= 8


async def test_circuit_state_changes_are_logged_once_each(
    smtp_server_factory: SMTPServerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    server = smtp_server_factory("plain")
    server.stop()
    settings = FAST.model_copy(
        update={"in_place_retries": 0, "circuit_failures": 2, "circuit_open_seconds": 5.0}
    )
    params = params_for(server, "logged")
    now = [0.0]
    caplog.set_level(logging.INFO, logger="consumer.mail.circuit")
    async with Transport(settings, clock=lambda: now[0]) as transport:
        for _ in range(2):
            with pytest.raises(ConnectionDroppedError):
                await send(transport, params, message())
        for _ in range(3):  # refused while open: no log line per attempt
            with pytest.raises(CircuitOpenError):
                await send(transport, params, message())
        server.start()
        now[0] += 5.1
        assert (await send(transport, params, message(2))).code == 250
        assert (await send(transport, params, message(3))).code == 250
    lines = [(r.levelname, r.getMessage()) for r in caplog.records if r.name == "consumer.mail.circuit"]
    assert [level for level, _ in lines] == ["WARNING", "INFO", "INFO"], lines
    opened, half_open, closed = (text for _, text in lines)
    assert f"SMTP circuit of logged ({server.address}) opened after 2 consecutive failures" in opened
    assert "last error: logged: connection to" in opened
    assert "half-open" in half_open
    assert server.address in half_open
    assert "closed" in closed
    assert server.address in closed
    assert caplog.records[0].__dict__["connection"] == "logged"


async def test_every_recipient_greylisted_does_not_open_the_circuit(
    smtp_server_factory: SMTPServerFactory,
) -> None:
    greylisted = ["a@example.com", "b@example.com"]
    server = smtp_server_factory("reject_rcpt", reject_rcpt=greylisted, reject_rcpt_code=450)
    settings = FAST.model_copy(update={"in_place_retries": 0, "circuit_failures": 2})
    params = params_for(server, "greylist")
    built = build_message(
        Rendered("s", "b\n", None),
        sender=MailAddress("sales@example.com"),
        to=[MailAddress(a) for a in greylisted],
        event_id="ev-grey",
        rule_id="r-grey",
    )
    async with Transport(settings) as transport:
        for n in range(4):
            with pytest.raises(TransientSendError) as caught:
                await send(transport, params, built)
            assert caught.value.reason == "recipients_4xx"
            assert server.attempts == n + 1  # every attempt reached the server
            assert transport.circuit_state(params) is CircuitState.CLOSED
        assert metric("eventmail_smtp_circuit_open", "greylist") == 0


async def test_non_ascii_envelope_to_a_server_without_smtputf8(
    smtp_server_factory: SMTPServerFactory,
) -> None:
    server = smtp_server_factory("plain", smtputf8=False)
    params = params_for(server, "no-utf8")
    built = build_message(
        Rendered("s", "b\n", None),
        sender=MailAddress("sales@example.com"),
        to=[MailAddress("jürgen@example.com")],
        event_id="ev-utf8",
        rule_id="r-utf8",
    )
    assert built.smtputf8
    async with Transport(FAST) as transport:
        with pytest.raises(PermanentSendError, match="does not offer SMTPUTF8") as caught:
            await send(transport, params, built)
        assert caught.value.reason == "unsupported"
        assert caught.value.attempts == 1  # permanent: not retried in place
        assert server.attempts == 0  # refused before MAIL FROM
        assert (await send(transport, params, message(2))).code == 250  # ASCII mail still goes
    [received] = await server.wait_for_async(1)
    assert "SMTPUTF8" not in received.mail_options


async def test_ehlo_name_setting(smtp_server: SMTPTestServer) -> None:
    settings = FAST.model_copy(update={"ehlo_hostname": "mailer.example.com"})
    async with Transport(settings) as transport:
        await send(transport, params_for(smtp_server, "ehlo"), message())
    [received] = await smtp_server.wait_for_async(1)
    assert received.ehlo == "mailer.example.com"


async def test_starttls_mode_against_an_implicit_tls_port_says_use_ssl(
    smtp_server_factory: SMTPServerFactory,
) -> None:
    server = smtp_server_factory("ssl")
    settings = FAST.model_copy(update={"in_place_retries": 0, "connect_timeout_seconds": 1.0})
    async with Transport(settings) as transport:
        with pytest.raises(SendTimeoutError, match=r"implicit-TLS port, 465-style.*use encryption ssl"):
            await send(transport, params_for(server, "wrong-mode", encryption=Encryption.TLS), message())
        with pytest.raises(PermanentSendError, match="use encryption tls or none"):
            await send(
                transport,
                params_for(smtp_server_factory("plain"), "wrong-ssl", encryption=Encryption.SSL),
                message(),
            )


async def test_untrusted_certificate_names_the_setting_that_fixes_it(
    smtp_server_factory: SMTPServerFactory, smtp_ca: CertificateAuthority
) -> None:
    server = smtp_server_factory("ssl")
    manual = ConnectionParams.manual(server.host, server.port, "ssl")
    async with Transport(FAST) as transport:
        with pytest.raises(PermanentSendError, match="not trusted") as caught:
            await send(transport, manual, message())
        assert "set EVENTMAIL_SMTP__CA_FILE (or the rule's action.connection.ca_file)" in str(caught.value)
        trusted = dataclasses.replace(manual, ca_file=str(smtp_ca.ca_pem))
        assert (await send(transport, trusted, message(2))).code == 250
    await server.wait_idle_async()


async def test_a_reply_lost_after_the_final_dot_sends_a_copy_per_attempt(
    smtp_server_factory: SMTPServerFactory,
) -> None:
    """The duplicate window of docs/delivery.md: the server takes the message, its reply to the final
    "." comes after the data timeout, and every in-place retry hands it another copy."""
    server = smtp_server_factory("plain", data_reply_delay=1.0)
    settings = FAST.model_copy(update={"data_timeout_seconds": 0.3, "in_place_retries": 1})
    async with Transport(settings) as transport:
        with pytest.raises(SendTimeoutError) as caught:
            await send(transport, params_for(server, "slow-reply"), message(1))
        assert caught.value.attempts == 2
    copies = await server.wait_for_async(2)
    assert len({m.message_id for m in copies}) == 1
    assert copies[0].message_id == message(1).message_id
    server.clear()
    once = FAST.model_copy(update={"data_timeout_seconds": 0.3, "in_place_retries": 0})
    async with Transport(once) as transport:
        with pytest.raises(SendTimeoutError):
            await send(transport, params_for(server, "slow-reply"), message(2))
    assert len(await server.wait_for_async(1)) == 1
    await server.wait_idle_async()
    assert len(server.messages) == 1
