"""Certificates for HTTPS listeners: from Kubernetes TLS Secrets, or generated for local use.

A `kubernetes.io/tls` Secret (data base64, or stringData) gives the certificate and key. When the
control plane runs with a certificate folder (the local stack), every Secret a Gateway names but
no manifest defines is generated there once: a small CA (`ca.crt`, for clients to trust) and a
leaf per Secret for the Gateway's hostnames, localhost and 127.0.0.1, reused across restarts.
`translate` serves the pairs to Envoy over SDS.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from epp.controlplane.backends import doc_key


@dataclass(frozen=True, slots=True)
class CertPair:
    cert_pem: bytes
    key_pem: bytes


def secrets_from_manifests(others: Iterable[Mapping[str, object]]) -> dict[str, CertPair]:
    out: dict[str, CertPair] = {}
    for doc in others:
        if doc.get("kind") != "Secret" or doc.get("apiVersion") != "v1":
            continue
        pair = _pair(doc)
        if pair is not None:
            out[doc_key(doc)] = pair
    return out


def _pair(doc: Mapping[str, object]) -> CertPair | None:
    plain = doc.get("stringData")
    if isinstance(plain, dict) and "tls.crt" in plain and "tls.key" in plain:
        return CertPair(str(plain["tls.crt"]).encode(), str(plain["tls.key"]).encode())
    data = doc.get("data")
    if isinstance(data, dict) and "tls.crt" in data and "tls.key" in data:
        try:
            return CertPair(
                base64.b64decode(str(data["tls.crt"]), validate=True),
                base64.b64decode(str(data["tls.key"]), validate=True),
            )
        except (binascii.Error, ValueError):
            return None
    return None


class CertificateFolder:
    """Generates (once) and reuses certificates for Secrets that no manifest provides."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.ca_path = folder / "ca.crt"

    def pair(self, secret: str, hostnames: Iterable[str]) -> CertPair:
        names = sorted({h for h in hostnames if h and h != "*"} | {"localhost"})
        stem = secret.replace("/", "_")
        cert_path, key_path = self.folder / f"{stem}.crt", self.folder / f"{stem}.key"
        if cert_path.exists() and key_path.exists() and _covers(cert_path.read_bytes(), names):
            return CertPair(cert_path.read_bytes(), key_path.read_bytes())
        ca_cert, ca_key = self._ca()
        key = ec.generate_private_key(ec.SECP256R1())
        sans: list[x509.GeneralName] = [x509.DNSName(n) for n in names]
        sans.append(x509.IPAddress(ipaddress.ip_address("127.0.0.1")))
        cert = (
            _builder(names[0], key.public_key(), ca_cert.subject)
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False)
            .sign(ca_key, hashes.SHA256())
        )
        pair = CertPair(cert.public_bytes(serialization.Encoding.PEM), _key_pem(key))
        cert_path.write_bytes(pair.cert_pem)
        key_path.write_bytes(pair.key_pem)
        key_path.chmod(0o600)
        return pair

    def _ca(self) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
        self.folder.mkdir(parents=True, exist_ok=True)
        key_path = self.folder / "ca.key"
        if self.ca_path.exists() and key_path.exists():
            key = serialization.load_pem_private_key(key_path.read_bytes(), None)
            if isinstance(key, ec.EllipticCurvePrivateKey):
                return x509.load_pem_x509_certificate(self.ca_path.read_bytes()), key
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "epp local gateway CA")])
        usage = x509.KeyUsage(
            digital_signature=True,
            content_commitment=False,
            key_encipherment=False,
            data_encipherment=False,
            key_agreement=False,
            key_cert_sign=True,
            crl_sign=True,
            encipher_only=False,
            decipher_only=False,
        )
        cert = (
            _builder("epp local gateway CA", key.public_key(), subject)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(usage, critical=True)
            .sign(key, hashes.SHA256())
        )
        self.ca_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_path.write_bytes(_key_pem(key))
        key_path.chmod(0o600)
        return cert, key


def _builder(
    common_name: str, public_key: ec.EllipticCurvePublicKey, issuer: x509.Name
) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=365))
    )


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _covers(cert_pem: bytes, names: list[str]) -> bool:
    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (ValueError, x509.ExtensionNotFound):
        return False
    expires = cert.not_valid_after_utc
    fresh = expires > datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=1)
    return fresh and set(names) <= set(san.get_values_for_type(x509.DNSName))
