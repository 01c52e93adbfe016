"""How the operator serves its admission webhooks (DEDICATED_WEBHOOK_MODE): the chart's mode reads
its certificate files, development modes need none, and a typo is an error, not silently "off"."""

from __future__ import annotations

import kopf
import pytest

from dedicated.operator.handlers.admission import MANAGED_CONFIGURATION, webhook_server_from_env


def test_off_is_the_default_and_never_listens() -> None:
    server, managed = webhook_server_from_env({})
    assert managed is None and not isinstance(server, kopf.WebhookServer)


def test_serve_uses_the_mounted_certificate(tmp_path) -> None:
    (tmp_path / "tls.crt").write_text("cert")
    (tmp_path / "tls.key").write_text("key")
    server, managed = webhook_server_from_env({"DEDICATED_WEBHOOK_MODE": "serve", "DEDICATED_WEBHOOK_PORT": "9555",
                                               "DEDICATED_WEBHOOK_CERT_DIR": str(tmp_path)})
    assert isinstance(server, kopf.WebhookServer) and managed is None
    assert (server.addr, server.port, server.certfile, server.pkeyfile) == \
        ("0.0.0.0", 9555, str(tmp_path / "tls.crt"), str(tmp_path / "tls.key"))


def test_serve_without_a_certificate_fails_naming_the_files(tmp_path) -> None:
    with pytest.raises(ValueError, match="tls.crt"):
        webhook_server_from_env({"DEDICATED_WEBHOOK_MODE": "serve", "DEDICATED_WEBHOOK_CERT_DIR": str(tmp_path)})


def test_managed_is_local_and_kopf_managed() -> None:
    server, managed = webhook_server_from_env({"DEDICATED_WEBHOOK_MODE": "managed"})
    assert isinstance(server, kopf.WebhookServer) and server.addr == "127.0.0.1" and managed == MANAGED_CONFIGURATION


def test_a_typo_is_an_error() -> None:
    with pytest.raises(ValueError, match="off, serve or managed"):
        webhook_server_from_env({"DEDICATED_WEBHOOK_MODE": "serv"})
