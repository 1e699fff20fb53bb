"""Certificates for the Deployment Engine: a CA, a SuperLink certificate, node keys.

For production, bring certificates from your own CA (``--certificates DIR``
with ``ca.crt``, ``server.pem``, ``server.key``). These helpers create a
self-signed CA for a single federation and for tests.

Validity and renewal. The federation CA is valid :data:`CA_DAYS` (10 years)
and the SuperLink's certificate :data:`SERVER_DAYS` (1 year): the CA is what
every data holder installed (``ca.crt``), so it must outlive the federation;
the server certificate is what an attacker who stole the SuperLink's key
could use, so it is short-lived and renewed from the same CA
(:func:`renew_server_certificate`, ``fedlearn server --renew-certificates``):
holders keep their ``ca.crt``, only the server restarts. The server warns
:data:`RENEW_BEFORE_DAYS` days before its certificate expires and refuses to
start with an expired one.

Where the files go (``fedlearn server``)::

    RUN_DIR/certs/ca.crt            public: give it to data holders
    RUN_DIR/certs/server.pem        public: the SuperLink presents it
    RUN_DIR/secrets/tls/ca.key      secret: renews the server certificate
    RUN_DIR/secrets/tls/server.key  secret: the SuperLink's TLS key

Private keys are written 0600 from their first byte (:mod:`fedlearn.files`).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import logging
import os
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fedlearn.files import private_directory, write_atomically

__all__ = [
    "CA_DAYS",
    "RENEW_BEFORE_DAYS",
    "SERVER_DAYS",
    "Certificates",
    "make_certificates",
    "make_node_keypair",
    "renew_server_certificate",
    "server_certificates",
]

log = logging.getLogger(__name__)

_WILDCARDS = ("0.0.0.0", "::")
#: Validity of a federation CA created here (what data holders install).
CA_DAYS = 3650
#: Validity of a SuperLink certificate issued here (renewed from the same CA).
SERVER_DAYS = 365
#: The server warns when its certificate expires within this many days.
RENEW_BEFORE_DAYS = 30
_CA_CERT, _CA_KEY, _SERVER_CERT, _SERVER_KEY = "ca.crt", "ca.key", "server.pem", "server.key"
_PEM = serialization.Encoding.PEM


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
        certs = cls(directory / _CA_CERT, directory / _SERVER_CERT, directory / _SERVER_KEY)
        missing = [p.name for p in (certs.ca, certs.cert, certs.key) if not p.is_file()]
        if missing:
            raise FileNotFoundError(
                f"{directory} lacks {missing}; expected ca.crt, server.pem and server.key"
            )
        return certs


def _write_private(path: Path, data: bytes) -> None:
    write_atomically(path, data, mode=0o600)


def _write_public(path: Path, data: bytes) -> None:
    write_atomically(path, data, mode=0o644)


def _private_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(_PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _new_ca(days: int) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    now = _now()
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
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )
    return ca_key, ca_cert


def _issue_server(
    ca_key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate,
    *,
    hosts: Sequence[str],
    days: int,
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    if not hosts:
        raise ValueError("a server certificate needs at least one host name or IP")
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    now = _now()
    expires = now + dt.timedelta(days=days)
    if expires > ca_cert.not_valid_after_utc:
        # A certificate cannot outlive the CA that vouches for it.
        log.warning(
            "the federation CA expires on %s: the server certificate is valid until then only",
            ca_cert.not_valid_after_utc.date(),
        )
        expires = ca_cert.not_valid_after_utc
    server_key = ec.generate_private_key(ec.SECP256R1())
    server_cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
        .issuer_name(ca_cert.subject)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(expires)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return server_key, server_cert


def _layout(directory: Path, key_directory: Path | None) -> tuple[Certificates, Path | None]:
    """The certificate paths, and where the CA key is kept (``None``: not kept)."""
    keys = directory if key_directory is None else key_directory
    certs = Certificates(directory / _CA_CERT, directory / _SERVER_CERT, keys / _SERVER_KEY)
    return certs, None if key_directory is None else key_directory / _CA_KEY


def make_certificates(
    directory: str | Path,
    *,
    hosts: Sequence[str] = ("127.0.0.1", "localhost"),
    days: int = SERVER_DAYS,
    ca_days: int = CA_DAYS,
    key_directory: str | Path | None = None,
) -> Certificates:
    """Create a CA and a SuperLink certificate valid for ``hosts``.

    Parameters
    ----------
    directory : str or Path
        Output folder for the public files (``ca.crt``, ``server.pem``).
    hosts : sequence of str
        IP addresses and DNS names SuperNodes use to reach the SuperLink.
    days : int, default SERVER_DAYS (365)
        Validity of the server certificate.
    ca_days : int, default CA_DAYS (3650)
        Validity of the CA.
    key_directory : str or Path, optional
        Private folder (made 0700) for ``server.key`` and the CA's key
        ``ca.key``, which :func:`renew_server_certificate` needs. Without it,
        ``server.key`` goes to ``directory`` and the CA's key is not kept (no
        renewal: a new certificate means a new CA).
    """
    if days < 1 or ca_days < 1:
        raise ValueError(f"validity must be >= 1 day, got days={days}, ca_days={ca_days}")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    keys = None if key_directory is None else private_directory(Path(key_directory))
    certs, ca_key_path = _layout(directory, keys)
    ca_key, ca_cert = _new_ca(ca_days)
    server_key, server_cert = _issue_server(ca_key, ca_cert, hosts=hosts, days=days)
    if ca_key_path is not None:
        _write_private(ca_key_path, _private_pem(ca_key))
    _write_private(certs.key, _private_pem(server_key))
    _write_public(certs.cert, server_cert.public_bytes(_PEM))
    _write_public(certs.ca, ca_cert.public_bytes(_PEM))
    return certs


def renew_server_certificate(
    directory: str | Path,
    *,
    key_directory: str | Path,
    hosts: Sequence[str],
    days: int = SERVER_DAYS,
) -> Certificates:
    """Issue a new SuperLink key and certificate from the existing CA; keep the CA.

    Data holders' ``ca.crt`` stays valid: they need nothing new. Restart the
    SuperLink to present the new certificate.

    Parameters
    ----------
    directory : str or Path
        The folder with the CA's ``ca.crt`` (and ``server.pem``, replaced).
    key_directory : str or Path
        The private folder with the CA's ``ca.key`` (``server.key`` replaced).
    hosts : sequence of str
        Names and IPs the new certificate covers.
    days : int, default SERVER_DAYS (365)
        Validity of the new certificate (never beyond the CA's).

    Raises
    ------
    FileNotFoundError
        If the CA certificate or the CA's key is missing.
    ValueError
        If the CA key does not belong to the CA certificate, or the CA expired.
    """
    if days < 1:
        raise ValueError(f"validity must be >= 1 day, got {days}")
    directory, keys = Path(directory), Path(key_directory)
    certs, ca_key_path = _layout(directory, keys)
    assert ca_key_path is not None
    if not certs.ca.is_file():
        raise FileNotFoundError(
            f"no federation CA in {directory} (ca.crt) to renew the server certificate from; "
            "start without --renew-certificates to create a CA (data holders then need its "
            "ca.crt), or give your own certificates (--certificates)"
        )
    if not ca_key_path.is_file():
        raise FileNotFoundError(
            f"the CA's private key {ca_key_path} is missing, so the server certificate cannot "
            f"be renewed from the CA in {certs.ca} (a run directory made before fedlearn kept "
            "the CA key, or the key was removed). Renewing needs that key: without it, create "
            "a new CA (a new run directory, and every data holder needs the new ca.crt) or "
            "bring certificates from your own CA (--certificates)"
        )
    ca_cert = x509.load_pem_x509_certificate(certs.ca.read_bytes())
    loaded = serialization.load_pem_private_key(ca_key_path.read_bytes(), password=None)
    spki = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    if not isinstance(loaded, ec.EllipticCurvePrivateKey):
        raise ValueError(f"{ca_key_path} is not an EC private key")
    if loaded.public_key().public_bytes(*spki) != ca_cert.public_key().public_bytes(*spki):
        raise ValueError(f"{ca_key_path} is not the key of the CA in {certs.ca}")
    if ca_cert.not_valid_after_utc <= _now():
        raise ValueError(
            f"the federation CA in {certs.ca} expired on {ca_cert.not_valid_after_utc.date()}: "
            "a new CA is needed (data holders need its ca.crt)"
        )
    server_key, server_cert = _issue_server(loaded, ca_cert, hosts=hosts, days=days)
    _write_private(certs.key, _private_pem(server_key))
    _write_public(certs.cert, server_cert.public_bytes(_PEM))
    log.info(
        "renewed the server certificate (valid until %s) from the CA in %s",
        server_cert.not_valid_after_utc.date(),
        certs.ca,
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
    _write_public(
        public,
        key.public_key().public_bytes(
            serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
        ),
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
    key_directory: str | Path | None = None,
    renew: bool = False,
) -> Certificates | None:
    """The SuperLink's TLS: none when asked for, the operator's certificates, else our CA's.

    Secure by default: without ``certificates`` and without ``insecure``, a
    CA for this federation is created in ``directory`` the first time and
    kept after that (a resumed or restarted server presents a certificate
    from the same CA, so holders' ``ca.crt`` stays valid); its ``ca.crt`` is
    what data holders pass to ``fedlearn client --root-certificates``.

    Parameters
    ----------
    directory : str or Path
        Where the CA certificate and the server certificate are (public files).
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
    key_directory : str or Path, optional
        Private folder for ``server.key`` and the CA's ``ca.key`` (see
        :func:`make_certificates`); ``fedlearn server`` uses
        ``RUN_DIR/secrets/tls``. Without it, keys are kept as
        :func:`make_certificates` does without one (no renewal).
    renew : bool, default False
        Issue a new server certificate from the existing CA
        (:func:`renew_server_certificate`); needs ``key_directory``.

    Returns
    -------
    Certificates or None
        ``None`` exactly when ``insecure``.

    Raises
    ------
    ValueError
        If ``insecure`` comes with ``certificates``, ``supernode_auth`` or
        ``renew``; if ``renew`` comes with ``certificates``; if the kept
        server certificate expired or does not cover ``host`` and
        ``tls_hosts`` (renew it).
    FileNotFoundError
        If the ``certificates`` folder lacks one of its three files, or
        ``renew`` finds no CA or no CA key.

    Examples
    --------
    >>> server_certificates("certs", host="0.0.0.0", insecure=True) is None
    True
    """
    if insecure:
        if certificates is not None or supernode_auth or renew:
            raise ValueError(
                "--insecure cannot be combined with --certificates, --supernode-auth or "
                "--renew-certificates"
            )
        return None
    if certificates is not None:
        if renew:
            raise ValueError(
                "--renew-certificates renews a certificate from the CA fedlearn created; "
                "renew certificates of your own CA with that CA and pass them with --certificates"
            )
        return Certificates.in_directory(certificates)
    directory = Path(directory)
    keys = None if key_directory is None else Path(key_directory)
    names = [*tls_hosts, "127.0.0.1", "localhost", socket.getfqdn()]
    if host not in _WILDCARDS:
        names.insert(0, host)
    hosts = tuple(dict.fromkeys(names))
    certs, _ = _layout(directory, keys)
    legacy_key = directory / _SERVER_KEY
    if keys is not None and legacy_key.is_file() and not certs.key.exists():
        private_directory(keys)
        os.replace(legacy_key, certs.key)  # a run made before secrets/: same file system
        log.warning("moved the TLS server key out of the public %s to %s", directory, certs.key)
    if renew:
        if keys is None:
            raise ValueError("renewing the server certificate needs the CA key's folder")
        return renew_server_certificate(directory, key_directory=keys, hosts=hosts)
    if not certs.ca.is_file():
        log.info("creating a CA for this federation in %s", directory)
        return make_certificates(directory, hosts=hosts, key_directory=keys)
    missing = [p for p in (certs.cert, certs.key) if not p.is_file()]
    if missing:
        raise FileNotFoundError(
            f"the federation CA {certs.ca} is there but {[str(p) for p in missing]} "
            "are not: issue a new server certificate from it with --renew-certificates"
        )
    _check_kept(certs, wanted=[*tls_hosts, *([] if host in _WILDCARDS else [host])])
    return certs


def _check_kept(certs: Certificates, *, wanted: Sequence[str]) -> None:
    """Refuse a kept server certificate that expired or misses a name; warn before expiry."""
    cert = x509.load_pem_x509_certificate(certs.cert.read_bytes())
    expires = cert.not_valid_after_utc
    renew = "renew it with `fedlearn server --renew-certificates` (keeps the CA)"
    if expires <= _now():
        raise ValueError(
            f"the server certificate {certs.cert} expired on {expires.date()}: {renew}"
        )
    if expires - _now() < dt.timedelta(days=RENEW_BEFORE_DAYS):
        log.warning(
            "the server certificate %s expires on %s: %s", certs.cert, expires.date(), renew
        )
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        san = x509.SubjectAlternativeName([])
    covered = {str(ip) for ip in san.get_values_for_type(x509.IPAddress)}
    covered |= {name.lower() for name in san.get_values_for_type(x509.DNSName)}
    absent = [name for name in wanted if _canonical(name) not in covered]
    if absent:
        raise ValueError(f"the server certificate {certs.cert} does not cover {absent}: {renew}")


def _canonical(host: str) -> str:
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        return host.lower()
