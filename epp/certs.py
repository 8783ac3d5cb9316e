"""A self-signed certificate for serving TLS when none is mounted (upstream's default too).

Pure `cryptography`; no I/O beyond reading a mounted pair. Used by `epp.server` for the
ext_proc port (`--secure-serving`, `--cert-path DIR` with tls.crt/tls.key).
"""

from __future__ import annotations

import datetime
import ipaddress
from collections.abc import Sequence
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


def self_signed(
    hosts: Sequence[str] = ("localhost", "127.0.0.1"), days: int = 365
) -> tuple[bytes, bytes]:
    """(certificate PEM, private key PEM) valid for `hosts` (DNS names or IP addresses)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0] if hosts else "epp")])
    sans: list[x509.GeneralName] = []
    for host in hosts:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            sans.append(x509.DNSName(host))
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


def load_pair(folder: str | Path) -> tuple[bytes, bytes]:
    """tls.crt and tls.key from a mounted folder (a Kubernetes TLS Secret's layout)."""
    base = Path(folder)
    try:
        return (base / "tls.crt").read_bytes(), (base / "tls.key").read_bytes()
    except OSError as exc:
        raise ValueError(f"--cert-path {folder}: cannot read tls.crt/tls.key: {exc}") from exc
