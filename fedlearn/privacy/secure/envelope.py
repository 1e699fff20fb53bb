"""Sealed envelopes: bytes only the holder of one X25519 private key can open.

Used wherever the server relays a secret it must not read: the CKKS secret
key from the dealer to each client, a client's share to a CrypTen compute
party.

Construction: RFC 9180 HPKE from ``cryptography`` (no hand-made key schedule),
base mode, single shot, with the suite DHKEM(X25519, HKDF-SHA256),
HKDF-SHA256 and AES-256-GCM. An envelope is HPKE's output
``enc (32 bytes, the encapsulated ephemeral key) || ciphertext || tag (16)``,
:data:`ENVELOPE_OVERHEAD` = 48 bytes more than the plaintext (HPKE derives
the AEAD nonce from the key schedule, so none travels).

The caller's label binds an envelope to its purpose (run, ceremony or round,
recipient): it is HPKE's ``info`` (after a fixed domain tag), which enters the
key schedule, so a relay cannot replay an envelope elsewhere: opening with
another label, another private key, or altered bytes fails the same way.
(``info`` rather than AAD: ``cryptography`` exposes AAD only through private
helpers, and ``info`` binds the label at least as strongly.)
"""

from __future__ import annotations

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.hpke import AEAD, KDF, KEM, Suite
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

__all__ = [
    "ENVELOPE_OVERHEAD",
    "PUBLIC_KEY_BYTES",
    "EnvelopeError",
    "generate_keypair",
    "open_envelope",
    "seal",
]

#: Bytes of an X25519 public (and private) key.
PUBLIC_KEY_BYTES = 32
_TAG_BYTES = 16
#: Bytes an envelope adds to its plaintext: HPKE's ``enc`` and the AES-GCM tag.
ENVELOPE_OVERHEAD = KEM.X25519.enc_length() + _TAG_BYTES

_SUITE = Suite(KEM.X25519, KDF.HKDF_SHA256, AEAD.AES_256_GCM)
#: Prefix of every ``info``: separates these envelopes from other uses of the same keys.
_INFO_TAG = b"fedlearn/envelope/hpke/v1\x00"


class EnvelopeError(ValueError):
    """An envelope is malformed, for another recipient or label, or tampered with."""


def generate_keypair() -> tuple[bytes, bytes]:
    """A fresh X25519 key pair as ``(private_bytes, public_bytes)``, 32 bytes each."""
    private = X25519PrivateKey.generate()
    public = private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    return private.private_bytes_raw(), public


def seal(recipient_public: bytes, plaintext: bytes, *, label: bytes) -> bytes:
    """Encrypt ``plaintext`` to the holder of ``recipient_public``'s private key.

    Parameters
    ----------
    recipient_public : bytes
        The recipient's raw X25519 public key (32 bytes).
    plaintext : bytes
        What to seal.
    label : bytes
        What the envelope is for; :func:`open_envelope` must be given the same.

    Returns
    -------
    bytes
        The envelope, ``len(plaintext) + ENVELOPE_OVERHEAD`` bytes.

    Raises
    ------
    EnvelopeError
        ``recipient_public`` is not a usable X25519 public key.

    Examples
    --------
    >>> private, public = generate_keypair()
    >>> envelope = seal(public, b"secret", label=b"run=1/node=7")
    >>> open_envelope(private, envelope, label=b"run=1/node=7")
    b'secret'
    """
    if len(recipient_public) != PUBLIC_KEY_BYTES:
        raise EnvelopeError(
            f"an X25519 public key has {PUBLIC_KEY_BYTES} bytes, got {len(recipient_public)}"
        )
    try:
        recipient = X25519PublicKey.from_public_bytes(recipient_public)
        return _SUITE.encrypt(plaintext, recipient, info=_INFO_TAG + label)
    except ValueError as exc:  # e.g. a low-order point: the key agreement is all zeros
        raise EnvelopeError(f"cannot seal to this public key: {exc}") from exc


def open_envelope(private_key: bytes, envelope: bytes, *, label: bytes) -> bytes:
    """Decrypt an envelope sealed to this key under ``label``; :class:`EnvelopeError` if not."""
    if len(private_key) != PUBLIC_KEY_BYTES:
        raise EnvelopeError(
            f"an X25519 private key has {PUBLIC_KEY_BYTES} bytes, got {len(private_key)}"
        )
    if len(envelope) < ENVELOPE_OVERHEAD:
        raise EnvelopeError(f"envelope too short ({len(envelope)} bytes)")
    private = X25519PrivateKey.from_private_bytes(private_key)
    try:
        return _SUITE.decrypt(envelope, private, info=_INFO_TAG + label)
    except (InvalidTag, ValueError) as exc:
        raise EnvelopeError(
            "cannot open the envelope: it is for another key or label, or was altered"
        ) from exc
