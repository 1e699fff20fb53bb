"""What holders sign in CKKS mode, and the registrations the server relays.

Every statement is built with :func:`~fedlearn.privacy.secure.identity.statement`
(a purpose and named, length-framed fields) and signed with the holder's
Ed25519 identity key:

``registration``
    run, ceremony, node, name, identity, X25519 public key: "this identity,
    under this name, receives the key of this ceremony at this HPKE key".
``grant``
    run, ceremony, key fingerprint, dealer (name and identity), recipient
    (node, identity, X25519 key), SHA-256 of the envelope, digest of the key's
    members: "I, the dealer, sealed this key in this envelope to this
    registered recipient, and the key is shared with exactly these holders".
``contribution``
    run, ceremony, key fingerprint, round, node, identity, vector length,
    SHA-256 of the ciphertexts, the sum-MAC tags: "this is my one update of
    this round" (see :mod:`.summac`).
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Mapping
from dataclasses import dataclass

from flwr.app import ArrayRecord

from fedlearn.privacy.secure.envelope import PUBLIC_KEY_BYTES
from fedlearn.privacy.secure.identity import (
    IDENTITY_BYTES,
    SIGNATURE_BYTES,
    IdentityError,
    statement,
    verify,
)
from fedlearn.privacy.secure.stages import read_blob

__all__ = [
    "Registration",
    "ciphertexts_digest",
    "contribution_statement",
    "grant_statement",
    "members_digest",
    "pack_members",
    "pad_id",
    "unpack_members",
]


@dataclass(frozen=True)
class Registration:
    """A holder's self-signed registration for one ceremony, as relayed by the server.

    Attributes
    ----------
    node : int
        The Flower node id the holder registered from.
    name : str
        The holder's registered name.
    identity : bytes
        Its Ed25519 identity public key.
    public_key : bytes
        The X25519 key the ceremony's envelope for it is sealed to.
    signature : bytes
        Its identity's signature over :meth:`statement`.
    """

    node: int
    name: str
    identity: bytes
    public_key: bytes
    signature: bytes

    def statement(self, *, run_id: int, ceremony_id: str) -> bytes:
        """The bytes the holder signed."""
        return statement(
            "ckks-registration",
            run=run_id,
            ceremony=ceremony_id,
            node=self.node,
            name=self.name,
            identity=self.identity,
            x25519=self.public_key,
        )

    def verify(self, *, run_id: int, ceremony_id: str) -> None:
        """:class:`IdentityError` unless the registration is well formed and self-signed."""
        if len(self.identity) != IDENTITY_BYTES or len(self.public_key) != PUBLIC_KEY_BYTES:
            raise IdentityError(f"node {self.node}: malformed registration keys")
        try:
            verify(
                self.identity,
                self.statement(run_id=run_id, ceremony_id=ceremony_id),
                self.signature,
            )
        except IdentityError:
            raise IdentityError(
                f"node {self.node} ({self.name!r}): the registration is not signed by its "
                "identity for this run and ceremony"
            ) from None

    def blobs(self) -> dict[str, bytes]:
        """The blobs a stage request carries for this registration (keyed by node)."""
        return {
            f"pk-{self.node}": self.public_key,
            f"id-{self.node}": self.identity,
            f"reg-{self.node}": self.signature,
        }

    @classmethod
    def read(cls, blobs: ArrayRecord, *, node: int, name: str) -> Registration:
        """The registration of ``node`` from a stage request's blobs; ``ValueError`` if missing."""
        signature = read_blob(blobs, f"reg-{node}")
        if len(signature) != SIGNATURE_BYTES:
            raise ValueError(f"node {node}: a registration signature has {SIGNATURE_BYTES} bytes")
        return cls(
            node=node,
            name=name,
            identity=read_blob(blobs, f"id-{node}"),
            public_key=read_blob(blobs, f"pk-{node}"),
            signature=signature,
        )


def members_digest(members: Mapping[bytes, str]) -> bytes:
    """SHA-256 over a key's members (identity and name), in identity order."""
    digest = hashlib.sha256()
    for identity in sorted(members):
        name = members[identity].encode()
        digest.update(identity + struct.pack(">I", len(name)) + name)
    return digest.digest()


def pack_members(members: Mapping[bytes, str]) -> tuple[list[str], bytes]:
    """``(names, identities)``: the names and the concatenated identities, in identity order."""
    ordered = sorted(members)
    return [members[identity] for identity in ordered], b"".join(ordered)


def unpack_members(names: object, identities: bytes) -> dict[bytes, str]:
    """Inverse of :func:`pack_members`; ``ValueError`` if they do not match."""
    if not isinstance(names, list) or not all(isinstance(n, str) and n for n in names):
        raise ValueError("member names must be a list of non-empty strings")
    if len(identities) != IDENTITY_BYTES * len(names):
        raise ValueError(f"expected {len(names)} member identities of {IDENTITY_BYTES} bytes")
    keys = [identities[i : i + IDENTITY_BYTES] for i in range(0, len(identities), IDENTITY_BYTES)]
    members = dict(zip(keys, names, strict=True))
    if len(members) != len(names) or len(set(names)) != len(names):
        raise ValueError("a member identity or name is listed twice")
    return members


def grant_statement(
    *,
    run_id: int,
    ceremony_id: str,
    fingerprint: str,
    dealer_name: str,
    dealer: bytes,
    recipient: Registration,
    envelope: bytes,
    members: Mapping[bytes, str],
) -> bytes:
    """What a dealer signs for each envelope it seals."""
    return statement(
        "ckks-grant",
        run=run_id,
        ceremony=ceremony_id,
        fingerprint=fingerprint,
        dealer_name=dealer_name,
        dealer=dealer,
        node=recipient.node,
        recipient=recipient.identity,
        x25519=recipient.public_key,
        envelope=hashlib.sha256(envelope).digest(),
        members=members_digest(members),
    )


def ciphertexts_digest(chunks: list[bytes]) -> bytes:
    """SHA-256 over the length-framed ciphertext chunks, in order."""
    digest = hashlib.sha256()
    for chunk in chunks:
        digest.update(struct.pack(">Q", len(chunk)) + chunk)
    return digest.digest()


def contribution_statement(
    *,
    run_id: int,
    ceremony_id: str,
    fingerprint: str,
    server_round: int,
    node: int,
    identity: bytes,
    length: int,
    digest: bytes,
    tags: bytes,
) -> bytes:
    """What a contributor signs for its one protected update of a round."""
    return statement(
        "ckks-contribution",
        run=run_id,
        ceremony=ceremony_id,
        fingerprint=fingerprint,
        round=server_round,
        node=node,
        identity=identity,
        length=length,
        ciphertexts=digest,
        tags=tags,
    )


def pad_id(
    *, run_id: int, ceremony_id: str, server_round: int, identity: bytes, chunk: int
) -> bytes:
    """The sum-MAC pad identifier of one chunk of one contribution (unique per use)."""
    return statement(
        "ckks-mac-pad",
        run=run_id,
        ceremony=ceremony_id,
        round=server_round,
        identity=identity,
        chunk=chunk,
    )
