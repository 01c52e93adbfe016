"""The cluster PKI: identities RBAC relies on, loopback-only serving names, reuse and renewal."""

from __future__ import annotations

import ipaddress
from pathlib import Path

from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from dedicated.localcluster.kubeconfig import write_kubeconfig
from dedicated.localcluster.pki import ensure_pki, pki_problem

SERVICE_IP = "198.18.0.1"


def _load(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def test_identities_and_names(tmp_path: Path) -> None:
    pki, reason = ensure_pki(tmp_path / "pki", SERVICE_IP)
    assert reason == "ca.crt is missing"
    admin = _load(pki.cert("admin"))
    assert admin.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == "system:masters"
    kcm = _load(pki.cert("controller-manager"))
    assert kcm.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "system:kube-controller-manager"
    eku = kcm.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    api = _load(pki.cert("apiserver"))
    sans = api.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(sans.get_values_for_type(x509.IPAddress)) == {ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address(SERVICE_IP)}
    assert "kubernetes.default.svc" in sans.get_values_for_type(x509.DNSName)
    ca = _load(pki.ca_cert)
    assert all(_load(pki.cert(n)).issuer == ca.subject for n in ("apiserver", "etcd-server", "kwok"))
    assert (pki.sa_key.stat().st_mode & 0o777) == 0o600 and (pki.ca_key.stat().st_mode & 0o777) == 0o600


def test_reused_when_valid_recreated_when_broken(tmp_path: Path) -> None:
    pki, _ = ensure_pki(tmp_path / "pki", SERVICE_IP)
    ca_before = pki.ca_cert.read_bytes()
    assert ensure_pki(tmp_path / "pki", SERVICE_IP)[1] is None
    assert pki.ca_cert.read_bytes() == ca_before
    pki.cert("kwok").write_text("garbage")
    assert "unreadable certificate" in pki_problem(pki, SERVICE_IP)
    assert "does not name the service IP" in pki_problem_after_fix(tmp_path)
    pki.key("scheduler").unlink()
    _, reason = ensure_pki(tmp_path / "pki", SERVICE_IP)
    assert reason is not None and pki.ca_cert.read_bytes() != ca_before


def pki_problem_after_fix(tmp_path: Path) -> str:
    pki, _ = ensure_pki(tmp_path / "other", SERVICE_IP)
    return pki_problem(pki, "198.18.0.2")


def test_kubeconfig_embeds_credentials_privately(tmp_path: Path) -> None:
    import yaml

    pki, _ = ensure_pki(tmp_path / "pki", SERVICE_IP)
    path = write_kubeconfig(tmp_path / "kc", "https://127.0.0.1:6443", pki.ca_cert, pki.cert("admin"), pki.key("admin"), "admin")
    config = yaml.safe_load(path.read_text())
    assert config["clusters"][0]["cluster"]["server"] == "https://127.0.0.1:6443"
    assert config["users"][0]["user"]["client-key-data"]
    assert (path.stat().st_mode & 0o777) == 0o600
