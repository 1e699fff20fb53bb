"""The sum MAC: the decryptor checks that what it decrypts is the signed contributions' sum.

Why
---
The server adds the contributors' ciphertexts and asks the key's decryptor to
decrypt the sum. A server that lies could ask instead for one client's
ciphertext (revealing that client's update), for a crafted ciphertext (a
chosen equation in the secret key), or for two overlapping sums (whose
difference is one update). The decryptor must be able to tell, without seeing
any individual ciphertext: it holds the key, so a contributor's ciphertext in
its hands would be that contributor's update.

How
---
A ciphertext is ``(c0, c1)`` and decrypts to ``c0 + c1·s``. Only ``c1`` meets
the key. Each contributor tags the ``c1`` of each of its ciphertexts with a
linearly homomorphic MAC (Agrawal and Boneh, "Homomorphic MACs: MAC-based
integrity for network coding", ACNS 2009; a Carter–Wegman MAC whose hash is
linear), per data prime ``p`` and lane ``ℓ``::

    tag = <w_pℓ, c1 mod p> + pad(contributor, round, chunk, p, ℓ)   (mod p)

and signs the tags with its identity key. The keys ``w`` (uniform vectors
mod ``p``) and the pad key are derived from the CKKS secret context, which the
server never has, so tags look uniformly random to it. The decryptor, which
holds the same key, accepts a sum ciphertext only if for every chunk, prime
and lane ``<w, c1_sum> = Σ (tag_i − pad_i)``: the ``c1`` half is then the sum of
exactly the listed contributions, except with probability ``p**-2`` per prime
(``≈ 2**-72``). The ``c0`` half need not be checked: any change to it shifts
the decryption by an amount the server itself chose, so it learns nothing
beyond the sum of the listed contributions.

Pads are used once: a contributor tags one contribution per round, and the
pad binds its identity, the key, the round and the chunk.

Examples
--------
>>> mac = SumMac(b"secret context bytes", primes=(65537,), degree=4)  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import hmac

import numpy as np
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from numpy.typing import NDArray

__all__ = ["LANES", "SumMac", "tags_from_bytes", "tags_to_bytes"]

#: Independent MAC lanes per prime (forgery probability p**-LANES per prime).
LANES = 2
_INFO = b"fedlearn/ckks/sum-mac/v1"


def tags_to_bytes(tags: NDArray[np.uint64]) -> bytes:
    """Tags (shape ``(chunks, primes, LANES)``) as big-endian uint64 bytes."""
    return np.ascontiguousarray(tags, dtype=">u8").tobytes()


def tags_from_bytes(data: bytes, *, chunks: int, primes: int) -> NDArray[np.uint64]:
    """Inverse of :func:`tags_to_bytes`; ``ValueError`` unless there are ``chunks·primes·LANES``."""
    expected = chunks * primes * LANES * 8
    if len(data) != expected:
        raise ValueError(f"expected {expected} bytes of MAC tags, got {len(data)}")
    return np.frombuffer(data, dtype=">u8").astype(np.uint64).reshape(chunks, primes, LANES)


class SumMac:
    """Tags and checks ``c1`` polynomials under keys derived from a CKKS secret context.

    Parameters
    ----------
    secret_context : bytes
        The serialized CKKS secret context (the MAC keys come from it by HKDF).
    primes : tuple[int, ...]
        The data primes a ciphertext lives modulo.
    degree : int
        The ring degree N (coefficients per prime).
    """

    def __init__(self, secret_context: bytes, *, primes: tuple[int, ...], degree: int) -> None:
        okm = HKDF(algorithm=hashes.SHA256(), length=64, salt=None, info=_INFO).derive(
            secret_context
        )
        self._pad_key = okm[32:]
        self._primes = tuple(int(p) for p in primes)
        self._w = [
            [_uniform_mod(okm[:32], p, degree, nonce=(j << 8) | lane) for lane in range(LANES)]
            for j, p in enumerate(self._primes)
        ]

    def _hashes(self, c1: NDArray[np.uint64]) -> list[list[int]]:
        if c1.shape != (len(self._primes), len(self._w[0][0])):
            raise ValueError(f"c1 has shape {c1.shape}, expected ({len(self._primes)}, N)")
        out = []
        for j, p in enumerate(self._primes):
            residues = c1[j].astype(object)
            out.append([int(np.dot(w, residues)) % p for w in self._w[j]])
        return out

    def _pad(self, pad_id: bytes, j: int, lane: int) -> int:
        digest = hmac.new(self._pad_key, pad_id + bytes([j, lane]), hashlib.sha256).digest()
        return int.from_bytes(digest, "big") % self._primes[j]

    def tag(self, c1: NDArray[np.uint64], *, pad_id: bytes) -> NDArray[np.uint64]:
        """The tags of one chunk's ``c1``, shape ``(primes, LANES)``; ``pad_id`` used once."""
        hashes_ = self._hashes(c1)
        return np.array(
            [
                [(h + self._pad(pad_id, j, lane)) % p for lane, h in enumerate(hashes_[j])]
                for j, p in enumerate(self._primes)
            ],
            dtype=np.uint64,
        )

    def check(
        self, c1: NDArray[np.uint64], tags: list[NDArray[np.uint64]], pad_ids: list[bytes]
    ) -> bool:
        """Whether ``c1`` is the sum of the chunks whose ``tags`` (and pads) are given."""
        if len(tags) != len(pad_ids) or not tags:
            return False
        hashes_ = self._hashes(c1)
        for j, p in enumerate(self._primes):
            for lane in range(LANES):
                expected = sum(
                    int(t[j, lane]) - self._pad(pid, j, lane)
                    for t, pid in zip(tags, pad_ids, strict=True)
                )
                if hashes_[j][lane] != expected % p:
                    return False
        return True


def _uniform_mod(key: bytes, p: int, n: int, *, nonce: int) -> NDArray[np.object_]:
    """``n`` values uniform mod ``p`` from the ChaCha20 keystream (rejection sampling)."""
    # Block counter 0 (first 4 bytes), the stream index in the 12-byte nonce: disjoint streams.
    iv = bytes(4) + nonce.to_bytes(12, "little")
    stream = Cipher(algorithms.ChaCha20(key, iv), mode=None).encryptor()
    bits = p.bit_length()
    mask = np.uint64((1 << bits) - 1)
    out: list[int] = []
    while len(out) < n:
        draw = np.frombuffer(stream.update(bytes(8 * 2 * n)), dtype="<u8") & mask
        out.extend(int(v) for v in draw[draw < p][: n - len(out)])
    return np.array(out, dtype=object)
