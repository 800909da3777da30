"""The local certificate authority embedded mode makes for itself.

``llmops up`` on a fresh machine must serve TLS and authenticate every caller without any
setup, so the first start writes, under ``state_dir/security`` (each file 0600 from its
first byte, see :mod:`llmops.secret_files`):

- ``ca.pem`` / ``ca.key`` — a self-signed CA (ECDSA P-256, ten years), the trust root of
  this mesh only;
- ``server.pem`` / ``server.key`` — the servers' certificate, for ``localhost``,
  ``127.0.0.1``, ``::1``, the machine's name and the configured bind hosts;
- ``mesh.pem`` / ``mesh.key`` — the client certificate the services present to each other
  (subject ``CN=service:mesh, OU=service``: the identity and the role).

Certificates are renewed (from the same CA) when less than 30 days remain or when a host
they must name is missing; the CA itself is never replaced behind the operator's back.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from llmops.secret_files import create_secret_file

CA_NAME = "llmops local CA"
MESH_IDENTITY = "service:mesh"
_RENEW_BEFORE = dt.timedelta(days=30)
_LEAF_LIFETIME = dt.timedelta(days=365)
_CA_LIFETIME = dt.timedelta(days=3650)


@dataclass(frozen=True, slots=True)
class LocalPki:
    """Paths of the files :func:`ensure_local_pki` keeps in place."""

    directory: Path

    @property
    def ca(self) -> Path:
        return self.directory / "ca.pem"

    @property
    def ca_key(self) -> Path:
        return self.directory / "ca.key"

    @property
    def server_cert(self) -> Path:
        return self.directory / "server.pem"

    @property
    def server_key(self) -> Path:
        return self.directory / "server.key"

    @property
    def client_cert(self) -> Path:
        return self.directory / "mesh.pem"

    @property
    def client_key(self) -> Path:
        return self.directory / "mesh.key"


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _replace_secret(path: Path, data: bytes) -> None:
    """Write ``path`` 0600 atomically, replacing what is there (renewals)."""
    tmp = path.with_name(f".{path.name}.new")
    tmp.unlink(missing_ok=True)
    create_secret_file(tmp, data)
    os.replace(tmp, path)


_CA_USAGE = x509.KeyUsage(
    digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
    key_encipherment=False, data_encipherment=False, key_agreement=False,
    encipher_only=False, decipher_only=False,
)  # fmt: skip


def _load_or_make_ca(pki: LocalPki) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    if pki.ca.exists() and pki.ca_key.exists():
        cert = x509.load_pem_x509_certificate(pki.ca.read_bytes())
        key = serialization.load_pem_private_key(pki.ca_key.read_bytes(), password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ValueError(f"{pki.ca_key}: not the EC key of the local CA")
        return cert, key
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, CA_NAME)])
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + _CA_LIFETIME)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_CA_USAGE, critical=True)
        .sign(key, hashes.SHA256())
    )
    # The key first: a CA certificate without its key would be unusable after a crash.
    create_secret_file(pki.ca_key, _key_pem(key))
    create_secret_file(pki.ca, cert.public_bytes(serialization.Encoding.PEM))
    return _load_or_make_ca(pki)  # whoever won a race, use what is on disk


def _sans(hosts: Iterable[str]) -> list[x509.GeneralName]:
    names: dict[str, x509.GeneralName] = {}
    for host in hosts:
        if not host or host in ("0.0.0.0", "::"):
            continue
        try:
            names[host] = x509.IPAddress(ipaddress.ip_address(host))
        except ValueError:
            names[host] = x509.DNSName(host)
    return list(names.values())


def _needs_issue(cert_path: Path, key_path: Path, sans: list[x509.GeneralName]) -> bool:
    if not cert_path.exists() or not key_path.exists():
        return True
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    except ValueError:
        return True
    if cert.not_valid_after_utc - _now() < _RENEW_BEFORE:
        return True
    if not sans:
        return False
    try:
        have = set(cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value)
    except x509.ExtensionNotFound:
        return True
    return not set(sans) <= have


def _issue(
    ca: tuple[x509.Certificate, ec.EllipticCurvePrivateKey],
    subject: x509.Name,
    sans: list[x509.GeneralName],
    usage: x509.ObjectIdentifier,
    cert_path: Path,
    key_path: Path,
) -> None:
    ca_cert, ca_key = ca
    key = ec.generate_private_key(ec.SECP256R1())
    now = _now()
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(min(now + _LEAF_LIFETIME, ca_cert.not_valid_after_utc))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    _replace_secret(key_path, _key_pem(key))
    _replace_secret(cert_path, cert.public_bytes(serialization.Encoding.PEM))


def ensure_local_pki(directory: Path, hosts: Iterable[str] = ()) -> LocalPki:
    """The local CA and the certificates under ``directory``, created or renewed as needed.
    ``hosts``: bind addresses the server certificate must name besides the loopback ones."""
    pki = LocalPki(directory)
    directory.mkdir(parents=True, exist_ok=True)
    os.chmod(directory, 0o700)
    ca = _load_or_make_ca(pki)
    server_sans = _sans(["localhost", "127.0.0.1", "::1", socket.gethostname(), *hosts])
    if _needs_issue(pki.server_cert, pki.server_key, server_sans):
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "llmops mesh server")])
        _issue(ca, subject, server_sans, ExtendedKeyUsageOID.SERVER_AUTH, pki.server_cert,
               pki.server_key)  # fmt: skip
    if _needs_issue(pki.client_cert, pki.client_key, []):
        subject = x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "service"),
                x509.NameAttribute(NameOID.COMMON_NAME, MESH_IDENTITY),
            ]
        )
        _issue(ca, subject, [], ExtendedKeyUsageOID.CLIENT_AUTH, pki.client_cert,
               pki.client_key)  # fmt: skip
    return pki


def issue_client_certificate(
    pki: LocalPki, identity: str, roles: Iterable[str], cert_path: Path, key_path: Path
) -> None:
    """A client certificate from the local CA for ``identity`` (CN) with ``roles`` (OUs):
    ``llmops cert create`` for a caller that authenticates by mTLS."""
    ca = _load_or_make_ca(pki)
    attrs = [x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, r) for r in roles]
    subject = x509.Name([*attrs, x509.NameAttribute(NameOID.COMMON_NAME, identity)])
    _issue(ca, subject, [], ExtendedKeyUsageOID.CLIENT_AUTH, cert_path, key_path)
