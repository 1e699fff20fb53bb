"""Certificates for the Deployment Engine: a CA, a SuperLink certificate, node keys.

For production, bring certificates from your own CA (``--certificates DIR``
with ``ca.crt``, ``server.pem``, ``server.key``). These helpers create a
self-signed CA for a single federation and for tests.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["Certificates", "make_certificates", "make_node_keypair", "server_certificates"]

_WILDCARDS = ("0.0.0.0", "::")


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


def server_certificates(
    directory: str | Path,
    *,
    host: str,
    certificates: str | Path | None = None,
    tls_hosts: Sequence[str] = (),
    insecure: bool = False,
    supernode_auth: bool = False,
) -> Certificates | None:
    """The SuperLink's TLS: none when asked for, the operator's certificates, else a new CA.

    Secure by default: without ``certificates`` and without ``insecure``, a
    CA for this federation is created in ``directory``; its ``ca.crt`` is
    what data holders pass to ``fedlearn client --root-certificates``.

    Parameters
    ----------
    directory : str or Path
        Where a new CA and server certificate are written (see :func:`make_certificates`).
    host : str
        The address the SuperLink listens on; the certificate's first name,
        unless it is a wildcard (``0.0.0.0``, ``::``).
    certificates : str or Path, optional
        The operator's folder with ``ca.crt``, ``server.pem`` and ``server.key``.
    tls_hosts : sequence of str, default ()
        Names or IPs SuperNodes use to reach the server; a new certificate
        covers them, then ``127.0.0.1``, ``localhost`` and this machine's FQDN.
    insecure : bool, default False
        No TLS (trusted test networks only).
    supernode_auth : bool, default False
        Whether only registered SuperNodes may join (which needs TLS).

    Returns
    -------
    Certificates or None
        ``None`` exactly when ``insecure``.

    Raises
    ------
    ValueError
        If ``insecure`` comes with ``certificates`` or ``supernode_auth``.
    FileNotFoundError
        If the ``certificates`` folder lacks one of its three files.

    Examples
    --------
    >>> server_certificates("certs", host="0.0.0.0", insecure=True) is None
    True
    """
    if insecure:
        if certificates is not None or supernode_auth:
            raise ValueError(
                "--insecure cannot be combined with --certificates or --supernode-auth"
            )
        return None
    if certificates is not None:
        return Certificates.in_directory(certificates)
    names = [*tls_hosts, "127.0.0.1", "localhost", socket.getfqdn()]
    if host not in _WILDCARDS:
        names.insert(0, host)
    return make_certificates(directory, hosts=tuple(dict.fromkeys(names)))
