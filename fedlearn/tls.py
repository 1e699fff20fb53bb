"""Certificates for the Deployment Engine: a CA, a SuperLink certificate, node keys.

For production, bring certificates from your own CA (``--certificates DIR``
with ``ca.crt``, ``server.pem``, ``server.key``). These helpers create a
self-signed CA for a single federation and for tests.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["Certificates", "make_certificates", "make_node_keypair"]


@dataclass(frozen=True)
class Certificates:
    """Paths of a CA certificate and the SuperLink's certificate and private key."""

    ca: Path
    cert: Path
    key: Path

    @classmethod
    def in_directory(cls, directory: str | Path) -> Certificates:
        """Find ``ca.crt``, ``server.pem`` and ``server.key`` in ``directory``."""
        directory = Path(directory)
        certs = cls(directory / "ca.crt", directory / "server.pem", directory / "server.key")
        missing = [p.name for p in (certs.ca, certs.cert, certs.key) if not p.is_file()]
        if missing:
            raise FileNotFoundError(
                f"{directory} lacks {missing}; expected ca.crt, server.pem and server.key"
            )
        return certs


def _write_private(path: Path, data: bytes) -> None:
    path.write_bytes(data)
    os.chmod(path, 0o600)


def make_certificates(
    directory: str | Path,
    *,
    hosts: tuple[str, ...] = ("127.0.0.1", "localhost"),
    days: int = 30,
) -> Certificates:
    """Create a CA and a SuperLink certificate valid for ``hosts``.

    Parameters
    ----------
    directory : str or Path
        Output folder (``ca.crt``, ``server.pem``, ``server.key``; the CA's
        private key is not kept).
    hosts : tuple of str
        IP addresses and DNS names SuperNodes use to reach the SuperLink.
    days : int
        Validity.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fedlearn federation CA")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    server_key = ec.generate_private_key(ec.SECP256R1())
    server_cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
        .issuer_name(ca_name)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    certs = Certificates(directory / "ca.crt", directory / "server.pem", directory / "server.key")
    certs.ca.write_bytes(ca_cert.public_bytes(pem))
    certs.cert.write_bytes(server_cert.public_bytes(pem))
    _write_private(
        certs.key,
        server_key.private_bytes(
            pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ),
    )
    return certs


def make_node_keypair(directory: str | Path, name: str) -> tuple[Path, Path]:
    """Create a SuperNode authentication key pair (EC P-384, OpenSSH format).

    Returns
    -------
    (private_key, public_key)
        The operator registers the public key; the data holder keeps the private key.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP384R1())
    private, public = directory / name, directory / f"{name}.pub"
    _write_private(
        private,
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption(),
        ),
    )
    public.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
        )
    )
    return private, public
