"""Pytest fixtures of the real SMTP test servers (a pytest plugin: ``tests.support.smtp_fixtures``).

``smtp_ca``               session: :class:`~tests.support.smtp.CertificateAuthority` -- ``ca_pem`` (Path
                          of the CA certificate), ``client_context()`` (an ``ssl.SSLContext`` trusting
                          only it), ``server_context()``, ``server_cert_pem`` / ``server_key_pem``
``smtp_server_factory``   ``smtp_server_factory(kind="plain", *, start=True, **options) -> SMTPTestServer``,
                          started on a free port of 127.0.0.1; every server it made stops at test end
``smtp_server``           a started ``kind="plain"`` server

Kinds, options and the server's API are described in :mod:`tests.support.smtp`.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.smtp import CertificateAuthority, SMTPServerFactory, SMTPTestServer


@pytest.fixture(scope="session")
def smtp_ca(tmp_path_factory: pytest.TempPathFactory) -> CertificateAuthority:
    return CertificateAuthority(tmp_path_factory.mktemp("smtp-ca"))


@pytest.fixture
def smtp_server_factory(request: pytest.FixtureRequest) -> Iterator[SMTPServerFactory]:
    factory = SMTPServerFactory(lambda: request.getfixturevalue("smtp_ca"))
    yield factory
    factory.cleanup()


@pytest.fixture
def smtp_server(smtp_server_factory: SMTPServerFactory) -> SMTPTestServer:
    return smtp_server_factory("plain")
