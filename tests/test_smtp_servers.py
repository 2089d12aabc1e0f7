"""The SMTP test servers behave as promised, proven with a real client (aiosmtplib)."""

from __future__ import annotations

import asyncio
import time
from email.message import EmailMessage
from email.utils import make_msgid

import aiosmtplib
import pytest

from tests.support.smtp import CertificateAuthority, SMTPServerFactory, SMTPTestServer

SENDER = "sender@example.com"
RCPT = "ops@example.com"


def make_message(subject: str = "Lead sold", to: str | list[str] = RCPT) -> EmailMessage:
    message = EmailMessage()
    message["From"] = SENDER
    message["To"] = to if isinstance(to, str) else ", ".join(to)
    message["Subject"] = subject
    message["Message-ID"] = make_msgid(domain="eventmail.test")
    message.set_content("Lead l-1 sold for 42.00 USD.\n")
    return message


async def send(server: SMTPTestServer, message: EmailMessage | None = None, **kwargs: object) -> object:
    kwargs.setdefault("timeout", 5)
    return await aiosmtplib.send(
        message or make_message(),
        hostname=server.host,
        port=server.port,
        **kwargs,  # type: ignore[arg-type]
    )


async def test_plain_server_records_the_message(smtp_server: SMTPTestServer) -> None:
    message = make_message(to=[RCPT, "sales@example.com"])
    await send(smtp_server, message)

    [received] = await smtp_server.wait_for_async(1)
    assert received.mail_from == SENDER
    assert received.rcpt_tos == [RCPT, "sales@example.com"]
    assert received.message_id == message["Message-ID"]
    assert received.subject == "Lead sold"
    assert received.message.get_content() == "Lead l-1 sold for 42.00 USD.\n"
    assert b"Lead l-1 sold" in received.data
    assert received.tls is None
    assert received.tls_version is None
    assert received.auth_login is None
    assert received.connection == 1
    assert received.transaction == 0
    assert received.peer[0] == "127.0.0.1"
    assert smtp_server.connections == 1
    assert smtp_server.attempts == 1


def test_a_sync_test_sends_and_waits(smtp_server: SMTPTestServer) -> None:
    message = make_message()
    asyncio.run(send(smtp_server, message))

    [received] = smtp_server.wait_for(1, timeout=5)
    assert received.message_id == message["Message-ID"]
    assert smtp_server.message_ids == [message["Message-ID"]]


async def test_one_connection_carries_several_messages(smtp_server: SMTPTestServer) -> None:
    async with aiosmtplib.SMTP(hostname=smtp_server.host, port=smtp_server.port, timeout=5) as client:
        for index in range(3):
            await client.send_message(make_message(subject=f"mail {index}"))

    received = await smtp_server.wait_for_async(3)
    assert [message.subject for message in received] == ["mail 0", "mail 1", "mail 2"]
    assert {message.connection for message in received} == {1}
    assert [message.transaction for message in received] == [0, 1, 2]
    assert len(set(smtp_server.message_ids)) == 3


async def test_wait_for_gives_up_with_what_it_saw(smtp_server: SMTPTestServer) -> None:
    await send(smtp_server)
    with pytest.raises(TimeoutError, match=r"no 2 message\(s\) within 0.2 s.*messages=1"):
        await smtp_server.wait_for_async(2, timeout=0.2)
    with pytest.raises(TimeoutError, match=r"no 2 message\(s\)"):
        smtp_server.wait_for(2, timeout=0.2)


async def test_starttls_upgrades_and_is_verified_against_the_test_ca(
    smtp_server_factory: SMTPServerFactory, smtp_ca: CertificateAuthority
) -> None:
    server = smtp_server_factory("starttls")
    await send(server, start_tls=True, tls_context=smtp_ca.client_context())

    [received] = await server.wait_for_async(1)
    assert received.tls == "starttls"
    assert received.tls_version is not None
    assert received.tls_version.startswith("TLS")
    assert server.connections == 1  # the upgrade is not a second connection
    await server.wait_idle_async()  # the client's TLS shutdown ran to its end in this test's loop


async def test_require_starttls_refuses_mail_in_clear(smtp_server_factory: SMTPServerFactory) -> None:
    server = smtp_server_factory("starttls", require_starttls=True)
    with pytest.raises(aiosmtplib.SMTPSenderRefused) as refused:
        await send(server, start_tls=False)

    assert refused.value.code == 530
    assert server.messages == []


async def test_implicit_tls_with_the_ca_bundle(
    smtp_server_factory: SMTPServerFactory, smtp_ca: CertificateAuthority
) -> None:
    server = smtp_server_factory("ssl")
    await send(server, use_tls=True, cert_bundle=str(smtp_ca.ca_pem))

    [received] = await server.wait_for_async(1)
    assert received.tls == "ssl"
    assert received.tls_version is not None
    await server.wait_idle_async()


async def test_implicit_tls_is_not_trusted_without_the_ca(smtp_server_factory: SMTPServerFactory) -> None:
    server = smtp_server_factory("ssl")
    with pytest.raises(aiosmtplib.SMTPConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        await send(server, use_tls=True)

    assert server.messages == []


@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN"])
async def test_auth_accepts_a_known_user(smtp_server_factory: SMTPServerFactory, mechanism: str) -> None:
    server = smtp_server_factory("auth", users={"alice": "wonderland", "bob": "builder"})
    async with aiosmtplib.SMTP(hostname=server.host, port=server.port, timeout=5) as client:
        assert mechanism.lower() in client.server_auth_methods
        login = client.auth_plain if mechanism == "PLAIN" else client.auth_login
        response = await login("bob", "builder")
        assert response.code == 235
        await client.send_message(make_message())

    [received] = await server.wait_for_async(1)
    assert received.auth_login == "bob"
    assert [(a.mechanism, a.login, a.success) for a in server.auth_attempts] == [(mechanism, "bob", True)]


async def test_auth_wrong_password_is_535(smtp_server_factory: SMTPServerFactory) -> None:
    server = smtp_server_factory("auth")  # DEFAULT_USERS: user / secret
    with pytest.raises(aiosmtplib.SMTPAuthenticationError) as failed:
        await send(server, username="user", password="not-the-password")

    assert failed.value.code == 535
    assert server.auth_attempts  # aiosmtplib tries each mechanism the server offers
    assert {(a.login, a.success) for a in server.auth_attempts} == {("user", False)}
    assert server.messages == []


async def test_auth_required_refuses_an_anonymous_sender(smtp_server_factory: SMTPServerFactory) -> None:
    server = smtp_server_factory("auth")
    with pytest.raises(aiosmtplib.SMTPSenderRefused) as refused:
        await send(server)

    assert refused.value.code == 530
    await send(server, username="user", password="secret")
    [received] = await server.wait_for_async(1)
    assert received.auth_login == "user"


async def test_auth_over_starttls_only(
    smtp_server_factory: SMTPServerFactory, smtp_ca: CertificateAuthority
) -> None:
    server = smtp_server_factory("starttls", users={"u": "p"}, auth_require_tls=True)
    async with aiosmtplib.SMTP(hostname=server.host, port=server.port, timeout=5, start_tls=False) as client:
        assert not client.supports_extension("auth")  # not offered before STARTTLS
        await client.starttls(tls_context=smtp_ca.client_context())
        await client.login("u", "p")
        await client.send_message(make_message())

    [received] = await server.wait_for_async(1)
    assert (received.tls, received.auth_login) == ("starttls", "u")
    await server.wait_idle_async()


STAGE_ERRORS: dict[str, type[aiosmtplib.SMTPException]] = {
    "mail": aiosmtplib.SMTPSenderRefused,
    "rcpt": aiosmtplib.SMTPRecipientsRefused,
    "data": aiosmtplib.SMTPDataError,
}


def error_code(error: BaseException) -> int:
    if isinstance(error, aiosmtplib.SMTPRecipientsRefused):
        return error.recipients[0].code
    assert isinstance(error, aiosmtplib.SMTPResponseException)
    return error.code


@pytest.mark.parametrize("code", [421, 451])
@pytest.mark.parametrize("stage", ["mail", "rcpt", "data"])
async def test_flaky_fails_the_first_message_then_recovers(
    smtp_server_factory: SMTPServerFactory, stage: str, code: int
) -> None:
    server = smtp_server_factory("flaky", fail_code=code, fail_stage=stage)
    client = aiosmtplib.SMTP(hostname=server.host, port=server.port, timeout=5)
    await client.connect()
    with pytest.raises(STAGE_ERRORS[stage]) as failed:
        await client.send_message(make_message(subject="first try"))
    assert error_code(failed.value) == code

    if code == 421:  # the server closed the channel; so did the client
        await server.wait_until_async(lambda: server.open_connections == 0, what="closed connection")
        assert not client.is_connected
        await client.connect()
    await client.send_message(make_message(subject="second try"))
    await client.quit()

    [received] = await server.wait_for_async(1)
    assert received.subject == "second try"
    assert received.transaction == 1
    assert received.connection == (2 if code == 421 else 1)
    assert server.attempts == 2
    assert server.failures == 1


async def test_flaky_first_n_messages(smtp_server_factory: SMTPServerFactory) -> None:
    server = smtp_server_factory("flaky", fail_code=451, fail_times=2)
    codes = []
    for _ in range(3):
        try:
            await send(server)
            codes.append(250)
        except aiosmtplib.SMTPDataError as error:
            codes.append(error.code)

    assert codes == [451, 451, 250]
    assert len(await server.wait_for_async(1)) == 1


@pytest.mark.parametrize("stage", ["rcpt", "data"])
async def test_reject_is_permanent(smtp_server_factory: SMTPServerFactory, stage: str) -> None:
    server = smtp_server_factory("reject", fail_stage=stage)
    for _ in range(3):
        with pytest.raises(STAGE_ERRORS[stage]) as failed:
            await send(server)
        assert error_code(failed.value) == 550

    assert server.failures == 3
    assert server.attempts == 3
    assert server.messages == []


async def test_reject_rcpt_refuses_some_recipients_and_delivers_to_the_others(
    smtp_server_factory: SMTPServerFactory,
) -> None:
    server = smtp_server_factory("reject_rcpt", reject_rcpt=["Bounce@Example.com"])
    errors, _ = await aiosmtplib.send(
        make_message(to=[RCPT, "bounce@example.com"]),
        hostname=server.host,
        port=server.port,
        timeout=5,
    )

    assert list(errors) == ["bounce@example.com"]
    assert errors["bounce@example.com"].code == 550
    [received] = await server.wait_for_async(1)
    assert received.rcpt_tos == [RCPT]
    assert server.refused_rcpts == ["bounce@example.com"]


async def test_reject_rcpt_refusing_everyone(smtp_server_factory: SMTPServerFactory) -> None:
    server = smtp_server_factory("reject_rcpt", reject_rcpt=[RCPT])
    with pytest.raises(aiosmtplib.SMTPRecipientsRefused) as refused:
        await send(server)

    assert [error.recipient for error in refused.value.recipients] == [RCPT]
    assert server.messages == []


async def test_drop_in_data_disconnects_the_client(smtp_server_factory: SMTPServerFactory) -> None:
    server = smtp_server_factory("drop", drop_times=1)
    message = make_message()
    message.set_content("line\n" * 2000)  # more than one read: the drop lands mid-stream
    with pytest.raises(aiosmtplib.SMTPServerDisconnected):
        await send(server, message)
    assert server.drops == 1
    assert server.messages == []

    await send(server)  # only the first transaction is dropped
    assert len(await server.wait_for_async(1)) == 1


async def test_hang_at_data_end_times_the_client_out(smtp_server_factory: SMTPServerFactory) -> None:
    server = smtp_server_factory("hang")
    started = time.monotonic()
    async with asyncio.timeout(10):  # a safety net: the client's own timeout must fire first
        with pytest.raises(aiosmtplib.SMTPTimeoutError):
            await send(server, timeout=0.3)

    assert time.monotonic() - started >= 0.3
    assert server.hangs == 1
    assert server.attempts == 1
    assert server.messages == []


async def test_hang_then_accept_is_a_delivery_the_client_never_heard_of(
    smtp_server_factory: SMTPServerFactory,
) -> None:
    server = smtp_server_factory("hang", hang_seconds=0.5)
    message = make_message()
    with pytest.raises(aiosmtplib.SMTPTimeoutError):
        await send(server, message, timeout=0.1)

    [received] = await server.wait_for_async(1)
    assert received.message_id == message["Message-ID"]


async def test_silent_server_never_greets(smtp_server_factory: SMTPServerFactory) -> None:
    server = smtp_server_factory("silent")
    async with asyncio.timeout(10):
        with pytest.raises(aiosmtplib.SMTPConnectTimeoutError):
            await send(server, timeout=0.3)

    assert server.connections == 1
    assert server.attempts == 0


async def test_stop_and_start_on_the_same_port(smtp_server: SMTPTestServer) -> None:
    port = smtp_server.port
    await send(smtp_server, make_message(subject="before"))

    idle = aiosmtplib.SMTP(hostname=smtp_server.host, port=port, timeout=5)
    await idle.connect()
    smtp_server.stop()
    assert not smtp_server.running
    with pytest.raises(aiosmtplib.SMTPConnectError):
        await send(smtp_server, make_message(subject="during"))
    with pytest.raises(aiosmtplib.SMTPServerDisconnected):  # open connections were aborted
        await idle.noop()

    smtp_server.start()
    assert smtp_server.port == port
    await send(smtp_server, make_message(subject="after"))
    received = await smtp_server.wait_for_async(2)
    assert [message.subject for message in received] == ["before", "after"]


async def test_reply_delays(smtp_server_factory: SMTPServerFactory) -> None:
    server = smtp_server_factory("plain", reply_delay=0.02, data_reply_delay=0.1)
    async with aiosmtplib.SMTP(hostname=server.host, port=server.port, timeout=5) as client:
        started = time.monotonic()
        await client.noop()
        assert time.monotonic() - started >= 0.02
        await client.mail(SENDER)
        await client.rcpt(RCPT)
        started = time.monotonic()
        await client.data(make_message().as_bytes())
        assert time.monotonic() - started >= 0.1

    assert len(await server.wait_for_async(1)) == 1


def test_unknown_kind_is_refused(smtp_server_factory: SMTPServerFactory) -> None:
    with pytest.raises(ValueError, match="unknown SMTP test server kind 'smtps'"):
        smtp_server_factory("smtps")
