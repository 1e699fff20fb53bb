"""Sealed envelopes: bytes only the holder of one X25519 private key can open.

Used wherever the server relays a secret it must not read: the CKKS secret
key from the dealer to each client, a client's share to a CrypTen compute
party. Construction (ECIES): an ephemeral X25519 key agreement with the
recipient's public key, HKDF-SHA256 over both public keys and the caller's
context label, then AES-256-GCM with the label as associated data. A sealed
envelope is ``ephemeral public key (32) || nonce (12) || ciphertext + tag``.

The label binds an envelope to its purpose (run, round, recipient), so a
relay cannot replay it elsewhere: opening with another label fails.
"""

from __future__ import annotations

import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

__all__ = ["EnvelopeError", "generate_keypair", "open_envelope", "seal"]

_KEY = 32
_NONCE = 12
_TAG = 16


class EnvelopeError(ValueError):
    """An envelope is malformed, for another recipient or label, or tampered with."""


def generate_keypair() -> tuple[bytes, bytes]:
    """A fresh X25519 key pair as ``(private_bytes, public_bytes)``, 32 bytes each."""
    private = X25519PrivateKey.generate()
    public = private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    return private.private_bytes_raw(), public


def _derive(shared: bytes, ephemeral: bytes, recipient: bytes, label: bytes) -> bytes:
    return HKDF(
        algorithm=hashes.SHA256(), length=_KEY, salt=ephemeral + recipient, info=label
    ).derive(shared)


def seal(recipient_public: bytes, plaintext: bytes, *, label: bytes) -> bytes:
    """Encrypt ``plaintext`` to the holder of ``recipient_public``'s private key."""
    if len(recipient_public) != _KEY:
        raise EnvelopeError(f"an X25519 public key has {_KEY} bytes, got {len(recipient_public)}")
    ephemeral = X25519PrivateKey.generate()
    ephemeral_public = ephemeral.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    shared = ephemeral.exchange(X25519PublicKey.from_public_bytes(recipient_public))
    key = _derive(shared, ephemeral_public, recipient_public, label)
    nonce = os.urandom(_NONCE)
    return ephemeral_public + nonce + AESGCM(key).encrypt(nonce, plaintext, label)


def open_envelope(private_key: bytes, envelope: bytes, *, label: bytes) -> bytes:
    """Decrypt an envelope sealed to this key under ``label``; :class:`EnvelopeError` if not."""
    if len(envelope) < _KEY + _NONCE + _TAG:
        raise EnvelopeError(f"envelope too short ({len(envelope)} bytes)")
    private = X25519PrivateKey.from_private_bytes(private_key)
    recipient_public = private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    ephemeral_public, nonce = envelope[:_KEY], envelope[_KEY : _KEY + _NONCE]
    try:
        shared = private.exchange(X25519PublicKey.from_public_bytes(ephemeral_public))
        key = _derive(shared, ephemeral_public, recipient_public, label)
        return AESGCM(key).decrypt(nonce, envelope[_KEY + _NONCE :], label)
    except (InvalidTag, ValueError) as exc:
        raise EnvelopeError(
            "cannot open the envelope: it is for another key or label, or was altered"
        ) from exc
