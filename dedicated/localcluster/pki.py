"""The local cluster's PKI: one CA, serving and client certificates, service-account keys.

Why a real PKI: the operator, kubectl and helm must talk to the API server exactly as they would
to a production cluster (TLS, client-certificate identities that RBAC can tell apart), and the
controller manager signs service-account tokens. The files are made once per state directory and
reused by later starts; a missing, unreadable or soon-expiring file makes the whole set new.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CA_NAME = "dedicated-local-ca"
# The aggregation layer's CA: extension API servers trust requests proxied by the API server only
# when its client certificate comes from this separate CA (as kubeadm sets it up).
FRONT_PROXY_CA = "front-proxy-ca"
FRONT_PROXY_CLIENT = "front-proxy-client"
LEAF_DAYS = 5 * 365
CA_DAYS = 10 * 365
RENEW_BEFORE = dt.timedelta(days=7)
LOOPBACK = ipaddress.ip_address("127.0.0.1")


@dataclass(frozen=True)
class CertSpec:
    """One certificate: its file stem, subject, and whether it serves, authenticates, or both."""

    name: str
    common_name: str
    organizations: tuple[str, ...] = ()
    server: bool = False
    client: bool = False
    dns_names: tuple[str, ...] = ()
    ips: tuple[str, ...] = ()
    issuer: str = "ca"


def cert_specs(service_ip: str) -> tuple[CertSpec, ...]:
    """Every certificate the cluster uses. Client identities follow Kubernetes' own names, so the
    built-in RBAC roles (system:kube-controller-manager, system:kube-scheduler) apply unchanged."""
    local = dict(dns_names=("localhost",), ips=("127.0.0.1",))
    return (
        CertSpec("etcd-server", "etcd", server=True, client=True, **local),
        CertSpec("apiserver-etcd-client", "kube-apiserver-etcd-client", client=True),
        CertSpec(
            "apiserver",
            "kube-apiserver",
            server=True,
            dns_names=(
                "localhost",
                "kubernetes",
                "kubernetes.default",
                "kubernetes.default.svc",
                "kubernetes.default.svc.cluster.local",
            ),
            ips=("127.0.0.1", service_ip),
        ),
        CertSpec("admin", "dedicated-admin", organizations=("system:masters",), client=True),
        CertSpec("controller-manager", "system:kube-controller-manager", client=True),
        CertSpec("controller-manager-serving", "kube-controller-manager", server=True, **local),
        CertSpec("scheduler", "system:kube-scheduler", client=True),
        CertSpec("scheduler-serving", "kube-scheduler", server=True, **local),
        CertSpec("kwok", "dedicated:kwok-controller", organizations=("dedicated:kwok",), client=True),
        CertSpec("kwok-serving", "kwok-controller", server=True, **local),
        CertSpec(FRONT_PROXY_CLIENT, FRONT_PROXY_CLIENT, client=True, issuer=FRONT_PROXY_CA),
    )


@dataclass(frozen=True)
class Pki:
    """Paths of the PKI files in ``<state>/pki``."""

    root: Path

    def cert(self, name: str) -> Path:
        return self.root / f"{name}.crt"

    def key(self, name: str) -> Path:
        return self.root / f"{name}.key"

    @property
    def ca_cert(self) -> Path:
        return self.cert("ca")

    @property
    def ca_key(self) -> Path:
        return self.key("ca")

    @property
    def sa_key(self) -> Path:
        return self.root / "sa.key"

    @property
    def sa_pub(self) -> Path:
        return self.root / "sa.pub"


def _write(path: Path, data: bytes, private: bool) -> None:
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if private else 0o644)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    os.replace(tmp, path)


def _key_pem(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _name(common_name: str, organizations: tuple[str, ...] = ()) -> x509.Name:
    attributes = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, org) for org in organizations]
    return x509.Name([*attributes, x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _issue(
    spec: CertSpec, ca_cert: x509.Certificate, ca_key: ec.EllipticCurvePrivateKey
) -> tuple[bytes, bytes]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    usages = []
    if spec.server:
        usages.append(ExtendedKeyUsageOID.SERVER_AUTH)
    if spec.client:
        usages.append(ExtendedKeyUsageOID.CLIENT_AUTH)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(spec.common_name, spec.organizations))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=LEAF_DAYS))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_encipherment=False,
                content_commitment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
    )
    alt_names: list[x509.GeneralName] = [x509.DNSName(name) for name in spec.dns_names]
    alt_names += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in spec.ips]
    if alt_names:
        builder = builder.add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    return cert.public_bytes(serialization.Encoding.PEM), _key_pem(key)


def _new_ca(common_name: str) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    name = _name(common_name)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_encipherment=False,
                content_commitment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def pki_problem(pki: Pki, service_ip: str) -> str | None:
    """Why the existing PKI cannot be reused (None when it can)."""
    specs = cert_specs(service_ip)
    names = ["ca", FRONT_PROXY_CA, *(spec.name for spec in specs)]
    for name in names:
        for path in (pki.cert(name), pki.key(name)):
            if not path.is_file():
                return f"{path.name} is missing"
    for path in (pki.sa_key, pki.sa_pub):
        if not path.is_file():
            return f"{path.name} is missing"
    deadline = dt.datetime.now(dt.UTC) + RENEW_BEFORE
    try:
        cas = {ca: x509.load_pem_x509_certificate(pki.cert(ca).read_bytes()) for ca in ("ca", FRONT_PROXY_CA)}
        issuers = {spec.name: spec.issuer for spec in specs}
        for name in names:
            cert = x509.load_pem_x509_certificate(pki.cert(name).read_bytes())
            if cert.not_valid_after_utc < deadline:
                return f"{name}.crt expires on {cert.not_valid_after_utc:%Y-%m-%d}"
            if name in issuers and cert.issuer != cas[issuers[name]].subject:
                return f"{name}.crt was not issued by {issuers[name]}"
        apiserver = x509.load_pem_x509_certificate(pki.cert("apiserver").read_bytes())
        sans = apiserver.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        if ipaddress.ip_address(service_ip) not in sans.get_values_for_type(x509.IPAddress):
            return f"apiserver.crt does not name the service IP {service_ip}"
    except (ValueError, x509.ExtensionNotFound) as error:
        return f"unreadable certificate ({error})"
    return None


def ensure_pki(root: Path, service_ip: str) -> tuple[Pki, str | None]:
    """The PKI under ``root``, created (or re-created, with the reason returned) when unusable."""
    pki = Pki(root)
    problem = pki_problem(pki, service_ip)
    if problem is None:
        return pki, None
    root.mkdir(parents=True, exist_ok=True)
    os.chmod(root, 0o700)
    cas = {}
    for ca, common_name in (("ca", CA_NAME), (FRONT_PROXY_CA, "dedicated-local-front-proxy-ca")):
        ca_cert, ca_key = _new_ca(common_name)
        _write(pki.cert(ca), ca_cert.public_bytes(serialization.Encoding.PEM), private=False)
        _write(pki.key(ca), _key_pem(ca_key), private=True)
        cas[ca] = (ca_cert, ca_key)
    for spec in cert_specs(service_ip):
        cert_pem, key_pem = _issue(spec, *cas[spec.issuer])
        _write(pki.cert(spec.name), cert_pem, private=False)
        _write(pki.key(spec.name), key_pem, private=True)
    # Service-account tokens are RS256-signed, the algorithm every token consumer accepts.
    sa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    _write(pki.sa_key, _key_pem(sa_key), private=True)
    sa_pub = sa_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    _write(pki.sa_pub, sa_pub, private=False)
    return pki, problem
