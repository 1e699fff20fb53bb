"""Sealed envelopes (RFC 9180 HPKE): only the right key under the right label opens them."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.hpke import AEAD, KDF, KEM, Suite

from fedlearn.privacy.secure.envelope import (
    ENVELOPE_OVERHEAD,
    PUBLIC_KEY_BYTES,
    EnvelopeError,
    generate_keypair,
    open_envelope,
    seal,
)

LABEL = b"fedlearn/ckks/secret-context/v1/run=1/ceremony=ab/node=7"
PLAINTEXT = b"a secret the relay must not read"

# Made once with seal() (private key 0x01..0x20): HPKE decryption is deterministic, so
# this pins the envelope format: a change to the suite, the info tag or the layout fails here.
GOLDEN_PRIVATE = bytes(range(1, 33))
GOLDEN_LABEL = b"run=1/ceremony=c0ffee/node=7"
GOLDEN_ENVELOPE = bytes.fromhex(
    "21d523238ebd838e6d83bf11fa818888b70243b3a5be391bb55959fe92591a5a"
    "c35b8490a15e377a621b2cbb50bbd012458bf5c89505c89cfa10e708e710760f1157bd7dac9fafb5"
)


def test_the_recipient_opens_what_was_sealed_under_the_same_label() -> None:
    private, public = generate_keypair()
    assert len(private) == len(public) == PUBLIC_KEY_BYTES
    envelope = seal(public, PLAINTEXT, label=LABEL)
    assert len(envelope) == len(PLAINTEXT) + ENVELOPE_OVERHEAD == len(PLAINTEXT) + 48
    assert PLAINTEXT not in envelope
    assert open_envelope(private, envelope, label=LABEL) == PLAINTEXT
    assert open_envelope(private, seal(public, b"", label=b""), label=b"") == b""


def test_sealing_twice_gives_unrelated_envelopes() -> None:
    _, public = generate_keypair()
    first, second = seal(public, PLAINTEXT, label=LABEL), seal(public, PLAINTEXT, label=LABEL)
    assert first[:32] != second[:32] and first[32:] != second[32:]  # fresh ephemeral key


def test_another_private_key_cannot_open_it() -> None:
    _, public = generate_keypair()
    stranger, _ = generate_keypair()
    envelope = seal(public, PLAINTEXT, label=LABEL)
    with pytest.raises(EnvelopeError, match="another key or label"):
        open_envelope(stranger, envelope, label=LABEL)


@pytest.mark.parametrize(
    "other_label",
    [
        LABEL.replace(b"node=7", b"node=8"),  # another recipient
        LABEL.replace(b"run=1", b"run=2"),  # another run
        LABEL.replace(b"ceremony=ab", b"ceremony=ac"),  # another ceremony
        LABEL + b"\x00",
        LABEL[:-1],
        b"",
    ],
)
def test_another_label_cannot_open_it(other_label: bytes) -> None:
    private, public = generate_keypair()
    envelope = seal(public, PLAINTEXT, label=LABEL)
    with pytest.raises(EnvelopeError, match="another key or label"):
        open_envelope(private, envelope, label=other_label)


def test_every_altered_byte_is_detected() -> None:
    private, public = generate_keypair()
    envelope = seal(public, PLAINTEXT, label=LABEL)
    # Every position: the encapsulated key (0..31), the ciphertext and the tag (last 16).
    for index in range(len(envelope)):
        altered = bytearray(envelope)
        altered[index] ^= 0x01
        with pytest.raises(EnvelopeError):
            open_envelope(private, bytes(altered), label=LABEL)


@pytest.mark.parametrize("cut", [1, 16, len(PLAINTEXT) + 16, len(PLAINTEXT) + ENVELOPE_OVERHEAD])
def test_truncated_or_extended_envelopes_are_refused(cut: int) -> None:
    private, public = generate_keypair()
    envelope = seal(public, PLAINTEXT, label=LABEL)
    with pytest.raises(EnvelopeError):
        open_envelope(private, envelope[:-cut], label=LABEL)
    with pytest.raises(EnvelopeError):
        open_envelope(private, envelope + b"\x00", label=LABEL)


def test_malformed_keys_are_refused() -> None:
    private, public = generate_keypair()
    with pytest.raises(EnvelopeError, match="32 bytes"):
        seal(public[:31], PLAINTEXT, label=LABEL)
    with pytest.raises(EnvelopeError, match="cannot seal"):
        seal(bytes(32), PLAINTEXT, label=LABEL)  # a low-order point: no shared secret
    envelope = seal(public, PLAINTEXT, label=LABEL)
    with pytest.raises(EnvelopeError, match="32 bytes"):
        open_envelope(private + b"\x00", envelope, label=LABEL)


def test_an_envelope_is_a_standard_rfc9180_hpke_ciphertext() -> None:
    # Any RFC 9180 implementation opens it: suite X25519 / HKDF-SHA256 / AES-256-GCM,
    # base mode, info = domain tag || label.
    private, public = generate_keypair()
    envelope = seal(public, PLAINTEXT, label=LABEL)
    suite = Suite(KEM.X25519, KDF.HKDF_SHA256, AEAD.AES_256_GCM)
    key = X25519PrivateKey.from_private_bytes(private)
    assert suite.decrypt(envelope, key, info=b"fedlearn/envelope/hpke/v1\x00" + LABEL) == PLAINTEXT


def test_golden_envelope_still_opens() -> None:
    plain = open_envelope(GOLDEN_PRIVATE, GOLDEN_ENVELOPE, label=GOLDEN_LABEL)
    assert plain == b"fedlearn golden envelope"
