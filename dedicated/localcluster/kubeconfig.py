"""Kubeconfig files: one for the admin (users, kubectl, helm, the operator) and one per component.

Certificates are embedded (``*-data``), so a kubeconfig keeps working when copied elsewhere on the
machine and never depends on the state directory's layout.
"""

from __future__ import annotations

import base64
import os
from pathlib import Path

import yaml

CLUSTER_NAME = "dedicated-local"


def kubeconfig_dict(server: str, ca_pem: bytes, cert_pem: bytes, key_pem: bytes, user: str) -> dict:
    def b64(data: bytes) -> str:
        return base64.b64encode(data).decode()

    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {"name": CLUSTER_NAME, "cluster": {"server": server, "certificate-authority-data": b64(ca_pem)}}
        ],
        "users": [{"name": user, "user": {"client-certificate-data": b64(cert_pem), "client-key-data": b64(key_pem)}}],
        "contexts": [{"name": CLUSTER_NAME, "context": {"cluster": CLUSTER_NAME, "user": user}}],
        "current-context": CLUSTER_NAME,
        "preferences": {},
    }


def write_kubeconfig(
    path: Path, server: str, ca_cert: Path, client_cert: Path, client_key: Path, user: str
) -> Path:
    """Write a kubeconfig atomically, readable only by its owner (it holds a private key)."""
    config = kubeconfig_dict(server, ca_cert.read_bytes(), client_cert.read_bytes(), client_key.read_bytes(), user)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        yaml.safe_dump(config, handle, sort_keys=False)
    os.replace(tmp, path)
    return path
