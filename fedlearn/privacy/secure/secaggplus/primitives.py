"""SecAgg+ primitives: neighbourhoods, masks, quantization and key encodings.

Masks come from AES-256-CTR keyed through HKDF-SHA256 with a label naming
the round and the node(s), so every mask is fresh per round; Flower's
``pseudo_rand_gen`` folds every seed into a 32-bit ``RandomState`` seed,
which an aggregator can enumerate. Quantization uses OS randomness for
stochastic rounding and expects values already checked to lie in range.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from flwr.common.secure_aggregation.crypto.symmetric_encryption import generate_shared_key
from flwr.supercore.primitives.asymmetric import bytes_to_public_key
from numpy.typing import NDArray

from fedlearn.privacy.secure.secaggplus.parameters import SecAggPlusParameters

__all__ = [
    "MASKED_BLOB",
    "SEED_BYTES",
    "dequantize_sum",
    "load_public_key",
    "neighbours",
    "pair_mask",
    "quantize",
    "scalar_bytes",
    "scalar_key",
    "self_mask",
]

#: Name of the masked vector in the train reply's ``SECURE_BLOBS`` record.
MASKED_BLOB = "masked"
#: Bytes of a self-mask seed ``b``.
SEED_BYTES = 32
#: Bytes of a SECP384R1 private scalar (what is secret-shared of ``sk1``).
_SK_BYTES = 48


def neighbours(node_ids: Sequence[int], node: int, *, num_shares: int) -> tuple[int, ...]:
    """Sorted neighbourhood of ``node`` (itself included) in the ring over ``sorted(node_ids)``.

    ``num_shares // 2`` nodes on each side; every node when there are at most
    ``num_shares``. The relation is symmetric: ``j ∈ N(i) ⇔ i ∈ N(j)``.
    """
    ring = sorted(node_ids)
    if len(ring) <= num_shares:
        return tuple(ring)
    index = ring.index(node)
    half = num_shares // 2
    return tuple(sorted({ring[(index + off) % len(ring)] for off in range(-half, half + 1)}))


def _prg(seed: bytes, label: str, length: int, modulus_bits: int) -> NDArray[np.uint64]:
    """``length`` uniform integers modulo ``2**modulus_bits`` from AES-256-CTR under ``seed``."""
    key = HKDF(
        algorithm=hashes.SHA256(), length=32, salt=None, info=f"fedlearn-secagg+|{label}".encode()
    ).derive(seed)
    encryptor = Cipher(algorithms.AES(key), modes.CTR(bytes(16))).encryptor()
    stream = encryptor.update(bytes(8 * length)) + encryptor.finalize()
    values: NDArray[np.uint64] = np.frombuffer(stream, dtype="<u8").astype(np.uint64)
    if modulus_bits < 64:
        values &= np.uint64((1 << modulus_bits) - 1)
    return values


def self_mask(
    seed: bytes, *, server_round: int, node: int, length: int, modulus_bits: int
) -> NDArray[np.uint64]:
    """The self mask ``PRG(b)`` node ``node`` adds in ``server_round``."""
    return _prg(seed, f"self|{server_round}|{node}", length, modulus_bits)


def pair_mask(
    private: ec.EllipticCurvePrivateKey,
    public: bytes,
    *,
    server_round: int,
    pair: tuple[int, int],
    length: int,
    modulus_bits: int,
) -> NDArray[np.uint64]:
    """The mask ``PRG(ECDH(sk1_i, pk1_j))`` the two nodes of ``pair`` share in ``server_round``.

    Node ``i`` adds it if ``i > j`` and subtracts it otherwise, so the pair's
    masks cancel in the sum. ``public`` is the other node's PEM ``pk1``.
    """
    low, high = sorted(pair)
    seed = generate_shared_key(private, load_public_key(public))
    return _prg(seed, f"pair|{server_round}|{low}|{high}", length, modulus_bits)


def quantize(vector: NDArray[np.float64], params: SecAggPlusParameters) -> NDArray[np.uint64]:
    """Integers in ``[0, Q]`` for values in ``[-c, c]`` (the caller checked the range)."""
    c, q = params.clipping_range, params.quantization_range
    scaled = (vector + c) * (q / (2.0 * c))
    if params.stochastic_rounding:
        floor = np.floor(scaled)
        uniform = (np.frombuffer(os.urandom(8 * vector.size), dtype="<u8") >> np.uint64(11)) * (
            2.0**-53
        )
        rounded = floor + (uniform < scaled - floor)
    else:
        rounded = np.rint(scaled)
    # Guards float rounding at the two ends only: inputs were checked to lie in [-c, c].
    quantized: NDArray[np.uint64] = np.clip(rounded, 0, q).astype(np.uint64)
    return quantized


def dequantize_sum(
    total: NDArray[np.uint64], count: int, params: SecAggPlusParameters
) -> NDArray[np.float64]:
    """The float sum of ``count`` quantized vectors whose integer sum is ``total``."""
    delta = 2.0 * params.clipping_range / params.quantization_range
    result: NDArray[np.float64] = total.astype(np.float64) * delta - count * params.clipping_range
    return result


def load_public_key(data: bytes) -> ec.EllipticCurvePublicKey:
    """A SECP384R1 public key from PEM bytes; ``ValueError`` for anything else."""
    try:
        key = bytes_to_public_key(data)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise ValueError(f"not a PEM public key ({exc})") from None
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP384R1):
        raise ValueError("public key is not on SECP384R1")
    return key


def scalar_bytes(key: ec.EllipticCurvePrivateKey) -> bytes:
    """The private scalar of ``key`` (what is secret-shared of ``sk1``), 48 bytes."""
    return key.private_numbers().private_value.to_bytes(_SK_BYTES, "big")


def scalar_key(data: bytes) -> ec.EllipticCurvePrivateKey:
    """The SECP384R1 private key of a reconstructed scalar; ``ValueError`` if it is not one."""
    if len(data) != _SK_BYTES:
        raise ValueError(f"a reconstructed sk1 has {len(data)} bytes, expected {_SK_BYTES}")
    return ec.derive_private_key(int.from_bytes(data, "big"), ec.SECP384R1())
