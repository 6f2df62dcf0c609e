"""A test CA and a server certificate it signed, made with openssl for a test."""

from __future__ import annotations

import subprocess
from pathlib import Path


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_pki(d: Path, name: str, san: str) -> None:
    """In `d`: NAME-ca.pem (a CA), NAME-server.pem/.key (a server certificate it signed,
    with subjectAltName `san`, e.g. "IP:127.0.0.1,DNS:localhost")."""
    _openssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        f"/CN={name} CA",
        "-keyout",
        f"{name}-ca.key",
        "-out",
        f"{name}-ca.pem",
        cwd=d,
    )
    _openssl(
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=mariadb-test",
        "-keyout",
        f"{name}-server.key",
        "-out",
        f"{name}-server.csr",
        cwd=d,
    )
    (d / f"{name}.ext").write_text(f"subjectAltName={san}\n")
    _openssl(
        "x509",
        "-req",
        "-in",
        f"{name}-server.csr",
        "-CA",
        f"{name}-ca.pem",
        "-CAkey",
        f"{name}-ca.key",
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        f"{name}.ext",
        "-out",
        f"{name}-server.pem",
        cwd=d,
    )
