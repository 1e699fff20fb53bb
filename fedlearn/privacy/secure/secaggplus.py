r"""SecAgg+ (Bell et al., CCS 2020) on Flower's Message API.

Flower 1.41 ships SecAgg+ only for its legacy API. This module runs the same
protocol on the :mod:`fedlearn.privacy.secure.base` contract, with Flower's
primitives (ECDH key pairs, Fernet, Shamir's secret sharing) and the fixes the
legacy path lacks:

* neighbourhoods and mask pairs are computed only over the nodes that
  completed each stage, so a node that drops before key sharing no longer
  aborts the round (Flower 1.41: survivors hit ``KeyError``);
* an even ``num_shares`` is refused up front (Flower silently halts the round);
* values outside ``±clipping_range`` are refused, never clamped.

Protocol, for round ``r`` with sampled nodes ``S0`` (all stage requests are
:data:`~fedlearn.privacy.secure.base.SECURE_QUERY_TYPE` messages):

1. ``secagg-setup``: the server sends the parameters; each client creates two
   SECP384R1 key pairs (``sk1`` for pairwise masks, ``sk2`` to encrypt shares)
   and replies with both public keys. ``S1`` = nodes that answered.
2. ``secagg-share-keys``: the server sends ``S1`` and the public keys of the
   node's neighbours. The neighbourhood ``N(i)`` of node ``i`` is a ring of
   ``num_shares`` nodes centred on ``i`` over ``sorted(S1)`` (all of ``S1`` if
   it is smaller); both sides compute it, the client checks the server's keys
   against it. The client draws a self-mask seed ``b`` and replies with
   Shamir shares (``threshold``-of-``|N(i)|``) of ``b`` and of ``sk1``, one
   per neighbour, each encrypted under the ECDH(``sk2``) key of that pair.
   ``S2`` = nodes that answered (nodes whose secrets could not be recovered
   from enough neighbours in ``S2`` are pruned).
3. Train message: :meth:`SecAggPlusServer.setup` returns, for each node of
   ``S2``, ``S2`` and the encrypted shares addressed to it.
   :meth:`SecAggPlusClient.protect` stores them, quantizes the vector and
   adds ``PRG(b)`` and ``±PRG(ECDH(sk1_i, pk1_j))`` for every neighbour ``j``
   in ``S2``, all modulo ``modulus_range``. ``S3`` = nodes whose masked
   vector arrived and is well formed; ``D = S2 \ S3`` are the dead.
4. ``secagg-unmask``: each node of ``S3`` receives its neighbours in ``S3``
   (active) and in ``D`` (dead) and returns its shares of ``b`` for the active
   and of ``sk1`` for the dead. It refuses a request that lists a node as both,
   names a node it holds no share of, or comes a second time. The server
   reconstructs each ``b`` and each dead ``sk1`` (``threshold`` shares each),
   removes the masks and dequantizes.

Precision. A value ``x`` in ``[-c, c]`` is mapped to an integer
``q = round((x + c) · Q / 2c)`` in ``[0, Q]`` (``Q = quantization_range``)
by stochastic (unbiased) or nearest rounding, so ``|q·Δ - (x + c)| < Δ``
(``≤ Δ/2`` for nearest), ``Δ = 2c/Q``. The masked arithmetic is exact modulo
``M = modulus_range`` as long as ``n·Q < M``, which the server enforces; the
revealed sum is therefore exactly ``Σ q_i``, dequantized as
``float(Σ q_i)·Δ - n·c``, and each coordinate is within
:meth:`SecAggPlusServer.error_bound` ``= n·Δ`` (``n·Δ/2`` nearest) plus a
float64 slack of ``n·c·2⁻⁴⁴`` of the plaintext float sum.

Deviations from Flower's primitives, on purpose: masks come from AES-256-CTR
keyed through HKDF-SHA256 (Flower's ``pseudo_rand_gen`` folds every seed
into a 32-bit ``RandomState`` seed, which an aggregator can enumerate), and
quantization uses OS randomness for stochastic rounding and refuses values
out of range (Flower's ``quantize`` clamps silently, draws from NumPy's global
generator and overflows ``int32`` for ``Q ≥ 2³¹``).

Threat model: semi-honest server and clients, as in Bell et al. The server
holds public keys only; it learns ``b`` of survivors and ``sk1`` of the dead,
both fresh per round and useless for any vector but the ones summed.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, cast

import numpy as np
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.fernet import InvalidToken
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Error, Message, RecordDict
from flwr.common.secure_aggregation.crypto.shamir import combine_shares, create_shares
from flwr.common.secure_aggregation.crypto.symmetric_encryption import (
    decrypt,
    encrypt,
    generate_shared_key,
)
from flwr.common.secure_aggregation.secaggplus_utils import (
    share_keys_plaintext_concat,
    share_keys_plaintext_separate,
)
from flwr.serverapp import Grid
from flwr.supercore.primitives.asymmetric import (
    bytes_to_private_key,
    bytes_to_public_key,
    generate_key_pairs,
    private_key_to_bytes,
    public_key_to_bytes,
)
from numpy.typing import NDArray

from fedlearn.config import SecureMode
from fedlearn.privacy.secure.base import (
    AggregationAbortedError,
    ClientProtocol,
    SecureSum,
    ServerProtocol,
    blob_bytes,
    request,
    stage_of,
)
from fedlearn.wire import SECURE_BLOBS, SECURE_QUERY_TYPE, SECURE_RECORD, ErrorCode, SecAggStage

__all__ = [
    "SecAggPlusClient",
    "SecAggPlusServer",
]

#: Stage names (the ``stage`` field of the :data:`SECURE_RECORD` ConfigRecord).

#: Name of the client's ConfigRecord in ``context.state``.
_STATE = "secaggplus"
#: Name of the masked vector in the train reply's :data:`SECURE_BLOBS` record.
_MASKED = "masked"
#: Bytes of a SECP384R1 private scalar (what is secret-shared of ``sk1``).
_SK_BYTES = 48
_SEED_BYTES = 32
#: Float64 slack of the error bound, per contributor and unit of clipping range.
_FLOAT_SLACK = 2.0**-44


# --------------------------------------------------------------------------- parameters


@dataclass(frozen=True)
class _Params:
    num_shares: int
    threshold: int
    clipping_range: float
    quantization_range: int
    modulus_bits: int
    stochastic_rounding: bool

    @property
    def modulus(self) -> int:
        return 1 << self.modulus_bits

    @property
    def wire_dtype(self) -> np.dtype[np.unsignedinteger[Any]]:
        return np.dtype(np.uint32 if self.modulus_bits <= 32 else np.uint64)

    @property
    def max_nodes(self) -> int:
        """Most contributors whose quantized sum cannot wrap around the modulus."""
        return (self.modulus - 1) // self.quantization_range

    def fields(self) -> dict[str, int | float | bool]:
        return {
            "num-shares": self.num_shares,
            "threshold": self.threshold,
            "clipping-range": self.clipping_range,
            "quantization-range": self.quantization_range,
            "modulus-bits": self.modulus_bits,
            "stochastic-rounding": self.stochastic_rounding,
        }


def _is_int(value: object) -> bool:
    return isinstance(value, int | np.integer) and not isinstance(value, bool)


def _check_params(
    *,
    num_shares: object,
    threshold: object,
    clipping_range: object,
    quantization_range: object,
    modulus_bits: object,
    stochastic_rounding: object,
) -> _Params:
    """Validate protocol parameters (server constructor and client setup alike)."""
    if not _is_int(num_shares) or cast(int, num_shares) < 3:
        raise ValueError(f"num_shares must be an integer >= 3, got {num_shares!r}")
    k = int(cast(int, num_shares))
    if k % 2 == 0:
        raise ValueError(
            f"num_shares must be odd (a ring of num_shares // 2 neighbours on each side "
            f"plus the node itself), got {k}; Flower's legacy SecAgg+ silently halts on even values"
        )
    if not _is_int(threshold):
        raise ValueError(f"reconstruction_threshold must be an integer, got {threshold!r}")
    t = int(cast(int, threshold))
    if not k / 2 < t <= k:
        raise ValueError(
            f"reconstruction_threshold must satisfy num_shares/2 < threshold <= num_shares "
            f"(= {k}), got {t}: at most num_shares/2 would let a set of colluders smaller than "
            "a majority of a neighbourhood reconstruct both secrets of a node"
        )
    if (
        not isinstance(clipping_range, int | float)
        or isinstance(clipping_range, bool)
        or not np.isfinite(clipping_range)
        or clipping_range <= 0
    ):
        raise ValueError(f"clipping_range must be a finite number > 0, got {clipping_range!r}")
    if not _is_int(quantization_range) or not 2 <= cast(int, quantization_range) <= 2**53:
        raise ValueError(
            f"quantization_range must be an integer in [2, 2**53], got {quantization_range!r}"
        )
    if not _is_int(modulus_bits) or not 8 <= cast(int, modulus_bits) <= 64:
        raise ValueError(f"modulus bits must be an integer in [8, 64], got {modulus_bits!r}")
    q, bits = int(cast(int, quantization_range)), int(cast(int, modulus_bits))
    if 2 * q > (1 << bits):
        raise ValueError(
            f"modulus_range (2**{bits}) must be at least 2 * quantization_range ({q}) so that "
            "the sum of two or more clients cannot wrap around"
        )
    if not isinstance(stochastic_rounding, bool):
        raise ValueError(f"stochastic_rounding must be a bool, got {stochastic_rounding!r}")
    return _Params(k, t, float(clipping_range), q, bits, stochastic_rounding)


# --------------------------------------------------------------------------- primitives


def _neighbours(node_ids: Sequence[int], node: int, *, num_shares: int) -> tuple[int, ...]:
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


def _pair_seed(private: ec.EllipticCurvePrivateKey, public: ec.EllipticCurvePublicKey) -> bytes:
    return generate_shared_key(private, public)


def _pair_label(server_round: int, low: int, high: int) -> str:
    return f"pair|{server_round}|{low}|{high}"


def _self_label(server_round: int, node: int) -> str:
    return f"self|{server_round}|{node}"


def _quantize(vector: NDArray[np.float64], params: _Params) -> NDArray[np.uint64]:
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


def _dequantize_sum(total: NDArray[np.uint64], count: int, params: _Params) -> NDArray[np.float64]:
    delta = 2.0 * params.clipping_range / params.quantization_range
    result: NDArray[np.float64] = total.astype(np.float64) * delta - count * params.clipping_range
    return result


def _public_key(data: bytes) -> ec.EllipticCurvePublicKey:
    """A SECP384R1 public key from PEM bytes; ``ValueError`` for anything else."""
    try:
        key = bytes_to_public_key(data)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise ValueError(f"not a PEM public key ({exc})") from None
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP384R1):
        raise ValueError("public key is not on SECP384R1")
    return key


def _scalar_bytes(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_numbers().private_value.to_bytes(_SK_BYTES, "big")


def _scalar_key(data: bytes) -> ec.EllipticCurvePrivateKey:
    if len(data) != _SK_BYTES:
        raise ValueError(f"a reconstructed sk1 has {len(data)} bytes, expected {_SK_BYTES}")
    return ec.derive_private_key(int.from_bytes(data, "big"), ec.SECP384R1())


# --------------------------------------------------------------------------- record access


def _config(msg: Message) -> ConfigRecord:
    record = msg.content.config_records.get(SECURE_RECORD)
    if record is None:
        raise ValueError(f"message has no {SECURE_RECORD!r} ConfigRecord")
    return record


def _blobs(msg: Message) -> ArrayRecord:
    record = msg.content.array_records.get(SECURE_BLOBS)
    return record if record is not None else ArrayRecord()


def _int_field(config: ConfigRecord, key: str) -> int:
    value = config.get(key)
    if not _is_int(value):
        raise ValueError(f"field {key!r} must be an integer, got {value!r}")
    return int(cast(int, value))


def _ids_field(config: ConfigRecord, key: str) -> list[int]:
    value = config.get(key)
    if not isinstance(value, list) or not all(_is_int(v) and cast(int, v) >= 0 for v in value):
        raise ValueError(f"field {key!r} must be a list of node ids, got {value!r}")
    ids = [int(cast(int, v)) for v in value]
    if len(set(ids)) != len(ids):
        raise ValueError(f"field {key!r} lists a node id more than once")
    return ids


def _blob_field(blobs: ArrayRecord, key: str) -> bytes:
    if key not in blobs:
        raise ValueError(f"missing blob {key!r}")
    try:
        return blob_bytes(blobs[key])
    except ValueError as exc:
        raise ValueError(f"blob {key!r}: {exc}") from None


def _round_of(config: ConfigRecord) -> int:
    server_round = _int_field(config, "round")
    if server_round < 0:
        raise ValueError(f"field 'round' must be >= 0, got {server_round}")
    return server_round


def _state_bytes(state: ConfigRecord, key: str) -> bytes:
    value = state[key]
    if not isinstance(value, bytes):
        raise ValueError(f"SecAgg+ state field {key!r} is not bytes")
    return value


def _state_ids(state: ConfigRecord, key: str) -> list[int]:
    value = state[key]
    if not isinstance(value, list) or not all(_is_int(v) for v in value):
        raise ValueError(f"SecAgg+ state field {key!r} is not a list of node ids")
    return [int(cast(int, v)) for v in value]


def _state_bytes_list(state: ConfigRecord, key: str) -> list[bytes]:
    value = state[key]
    if not isinstance(value, list) or not all(isinstance(v, bytes) for v in value):
        raise ValueError(f"SecAgg+ state field {key!r} is not a list of bytes")
    return cast(list[bytes], value)


# --------------------------------------------------------------------------- server


@dataclass
class _Round:
    """What the server keeps between :meth:`setup` and :meth:`aggregate` (public data only)."""

    server_round: int
    keyed: tuple[int, ...] = ()
    pk1: dict[int, bytes] = field(default_factory=dict)
    shared: tuple[int, ...] = ()
    neighbours: dict[int, tuple[int, ...]] = field(default_factory=dict)


class SecAggPlusServer(ServerProtocol):
    """The aggregator's side of SecAgg+; holds public keys only.

    Parameters
    ----------
    num_shares : int, default 5
        Neighbourhood size ``k`` (the node itself included): each node
        secret-shares its keys among, and masks with, ``k - 1`` neighbours.
        Odd, ``>= 3``; Bell et al. take ``k = O(log n)``.
    reconstruction_threshold : int, default 3
        Shares ``t`` needed to reconstruct a secret, ``k/2 < t <= k``. A round
        tolerates, in every neighbourhood, ``k - t`` nodes that stop answering.
    clipping_range : float, default 8.0
        Every value a client protects must lie in ``[-clipping_range,
        clipping_range]``; clients refuse (never clamp) anything else.
    quantization_range : int, default 2**22
        Integer levels ``Q`` per value: the quantization step is
        ``Δ = 2 * clipping_range / Q``.
    modulus_range : int, default 2**32
        Modulus ``M`` of the masked arithmetic, a power of two in
        ``[2**8, 2**64]``; at most ``(M - 1) // Q`` nodes per round. Masked
        vectors travel as ``uint32`` (``M <= 2**32``) or ``uint64``.
    min_survivors : int, optional
        Fewest contributors a revealed sum may have (default:
        ``reconstruction_threshold``); at least 2, since a sum of one vector
        is that vector.
    stochastic_rounding : bool, default True
        Unbiased stochastic rounding (OS randomness) or nearest rounding.

    Examples
    --------
    >>> server = SecAggPlusServer(num_shares=5, reconstruction_threshold=3)
    >>> server.error_bound(num_contributors=10) < 1e-4
    True
    """

    mode: ClassVar[SecureMode] = "secagg+"

    def __init__(
        self,
        *,
        num_shares: int = 5,
        reconstruction_threshold: int = 3,
        clipping_range: float = 8.0,
        quantization_range: int = 2**22,
        modulus_range: int = 2**32,
        min_survivors: int | None = None,
        stochastic_rounding: bool = True,
    ) -> None:
        if (
            not _is_int(modulus_range)
            or not 2**8 <= modulus_range <= 2**64
            or modulus_range & (modulus_range - 1) != 0
        ):
            raise ValueError(
                f"modulus_range must be a power of two in [2**8, 2**64], got {modulus_range!r}"
            )
        self._params = _check_params(
            num_shares=num_shares,
            threshold=reconstruction_threshold,
            clipping_range=clipping_range,
            quantization_range=quantization_range,
            modulus_bits=int(modulus_range).bit_length() - 1,
            stochastic_rounding=stochastic_rounding,
        )
        if min_survivors is None:
            min_survivors = self._params.threshold
        if not _is_int(min_survivors) or min_survivors < 2:
            raise ValueError(
                f"min_survivors must be an integer >= 2 (a sum of one vector reveals it), "
                f"got {min_survivors!r}"
            )
        if min_survivors > self._params.max_nodes:
            raise ValueError(
                f"min_survivors ({min_survivors}) exceeds the {self._params.max_nodes} nodes whose "
                f"sum fits modulus_range {modulus_range} at quantization_range {quantization_range}"
            )
        self._min_survivors = int(min_survivors)
        self._rounds: dict[int, _Round] = {}

    # ---------------------------------------------------------------- properties

    @property
    def min_survivors(self) -> int:
        """Fewest contributors a revealed sum may have."""
        return self._min_survivors

    @property
    def max_nodes(self) -> int:
        """Most nodes a round may sample (their quantized sum must not wrap)."""
        return self._params.max_nodes

    def error_bound(self, *, num_contributors: int) -> float:
        """Largest per-coordinate gap between a revealed sum and the plaintext float sum.

        ``n·Δ`` with stochastic rounding (``n·Δ/2`` with nearest rounding),
        ``Δ = 2·clipping_range/quantization_range``, plus ``n·clipping_range·2⁻⁴⁴``
        for float64 rounding.
        """
        if not _is_int(num_contributors) or num_contributors < 1:
            raise ValueError(f"num_contributors must be an integer >= 1, got {num_contributors!r}")
        p = self._params
        delta = 2.0 * p.clipping_range / p.quantization_range
        per_node = delta if p.stochastic_rounding else delta / 2.0
        return num_contributors * (per_node + p.clipping_range * _FLOAT_SLACK)

    # ---------------------------------------------------------------- setup

    def setup(
        self, grid: Grid, *, server_round: int, node_ids: Sequence[int], timeout: float
    ) -> dict[int, RecordDict]:
        """Run ``secagg-setup`` and ``secagg-share-keys`` with the sampled nodes.

        Returns
        -------
        dict[int, RecordDict]
            For every node that completed both stages (and whose secrets enough
            neighbours hold), the records to merge into its train message.

        Raises
        ------
        AggregationAbortedError
            If fewer than ``min_survivors`` nodes can take part.
        ValueError
            For malformed arguments or more nodes than the modulus allows.
        """
        if not _is_int(server_round) or server_round < 0:
            raise ValueError(f"server_round must be an integer >= 0, got {server_round!r}")
        if not isinstance(timeout, int | float) or not timeout > 0:
            raise ValueError(f"timeout must be a number > 0, got {timeout!r}")
        if not all(_is_int(n) and n >= 0 for n in node_ids):
            raise ValueError(f"node_ids must be non-negative integers, got {list(node_ids)!r}")
        ids = [int(n) for n in node_ids]
        if len(set(ids)) != len(ids):
            raise ValueError("node_ids lists a node more than once")
        if len(ids) > self._params.max_nodes:
            raise ValueError(
                f"{len(ids)} nodes sampled but at most {self._params.max_nodes} fit: their "
                f"quantized sum would wrap modulus_range 2**{self._params.modulus_bits}; raise "
                "modulus_range or lower quantization_range"
            )
        self._rounds.clear()  # rounds skipped after set-up leave state behind otherwise
        self._require(len(ids), server_round, "were sampled")
        state = _Round(server_round=server_round)
        p = self._params

        # Stage 1: parameters out, two public keys back.
        replies = self._exchange(
            grid,
            {n: request(SecAggStage.SETUP, round=server_round, **p.fields()) for n in ids},
            server_round,
            timeout,
        )
        pk2: dict[int, bytes] = {}
        seen_keys: set[bytes] = set()
        for node, reply in replies.items():
            try:
                blobs = _blobs(reply)
                keys = (_blob_field(blobs, "pk1"), _blob_field(blobs, "pk2"))
                for key in keys:
                    _public_key(key)
            except ValueError:
                continue
            if keys[0] == keys[1] or seen_keys & set(keys):
                continue  # a reused key would let one node stand in for another
            seen_keys.update(keys)
            state.pk1[node], pk2[node] = keys
        state.keyed = tuple(sorted(state.pk1))
        self._require(len(state.keyed), server_round, "answered secagg-setup")
        state.neighbours = {
            n: _neighbours(state.keyed, n, num_shares=p.num_shares) for n in state.keyed
        }

        # Stage 2: neighbours' public keys out, encrypted shares back.
        outgoing: dict[int, RecordDict] = {}
        for node in state.keyed:
            others = [j for j in state.neighbours[node] if j != node]
            neighbour_keys = {f"pk1-{j}": state.pk1[j] for j in others}
            neighbour_keys.update({f"pk2-{j}": pk2[j] for j in others})
            outgoing[node] = request(
                SecAggStage.SHARE_KEYS,
                round=server_round,
                keyed=list(state.keyed),
                **neighbour_keys,
            )
        replies = self._exchange(grid, outgoing, server_round, timeout)
        ciphertexts: dict[tuple[int, int], bytes] = {}  # (source, destination) -> ciphertext
        for node, reply in replies.items():
            expected = {j for j in state.neighbours[node] if j != node}
            try:
                destinations = _ids_field(_config(reply), "destinations")
                if set(destinations) != expected:
                    continue
                blobs = _blobs(reply)
                found = {j: _blob_field(blobs, f"to-{j}") for j in destinations}
            except ValueError:
                continue
            ciphertexts.update({(node, j): ct for j, ct in found.items()})
        shared = {src for src, _ in ciphertexts}
        # A node whose secrets fewer than `threshold` nodes of `shared` hold could
        # never be unmasked: leave it out (which may leave out others in turn).
        while True:
            weak = {n for n in shared if len(set(state.neighbours[n]) & shared) < p.threshold}
            if not weak:
                break
            shared -= weak
        state.shared = tuple(sorted(shared))
        self._require(len(state.shared), server_round, "completed secagg-share-keys")
        self._rounds[server_round] = state

        records: dict[int, RecordDict] = {}
        for node in state.shared:
            sources = [j for j in state.neighbours[node] if j != node and j in shared]
            records[node] = request(
                SecAggStage.TRAIN,
                round=server_round,
                shared=list(state.shared),
                sources=sources,
                **{f"from-{j}": ciphertexts[(j, node)] for j in sources},
            )
        return records

    # ---------------------------------------------------------------- replies

    def check_reply(self, msg: Message, *, length: int) -> str | None:
        """Why a masked train reply is unusable (``None`` if it is well formed)."""
        if not _is_int(length) or length < 1:
            raise ValueError(f"length must be an integer >= 1, got {length!r}")
        if msg.has_error():
            return f"error reply (code {msg.error.code}): {msg.error.reason}"
        node = msg.metadata.src_node_id
        if self._rounds and not any(node in r.shared for r in self._rounds.values()):
            return f"node {node} was not given key shares in any open SecAgg+ round"
        blobs = msg.content.array_records.get(SECURE_BLOBS)
        if blobs is None or _MASKED not in blobs:
            return f"no masked vector (ArrayRecord {SECURE_BLOBS!r} with {_MASKED!r})"
        array = blobs[_MASKED]
        dtype = np.dtype(self._params.wire_dtype).name
        if array.dtype != dtype or tuple(array.shape) != (length,):
            return (
                f"masked vector must be {dtype} of shape ({length},), "
                f"got {array.dtype} of shape {tuple(array.shape)}"
            )
        try:
            values = array.numpy()
        except Exception as exc:  # any decoding failure means garbage
            return f"masked vector does not decode: {type(exc).__name__}: {exc}"
        if values.dtype != np.dtype(dtype) or values.shape != (length,):
            return f"masked vector data is {values.dtype} {values.shape}, header said {dtype}"
        if self._params.modulus_bits < 64 and np.any(
            values.astype(np.uint64) >= np.uint64(self._params.modulus)
        ):
            return f"masked vector has values >= modulus_range 2**{self._params.modulus_bits}"
        return None

    # ---------------------------------------------------------------- aggregate

    def aggregate(
        self,
        grid: Grid,
        *,
        server_round: int,
        replies: Sequence[Message],
        length: int,
        timeout: float,
    ) -> SecureSum:
        """Sum the masked vectors, run ``secagg-unmask``, remove the masks, dequantize.

        Raises
        ------
        AggregationAbortedError
            If there was no setup for the round, fewer than ``min_survivors``
            vectors arrived, or some needed secret ends up with fewer than
            ``reconstruction_threshold`` shares. Never returns a partial sum.
        """
        state = self._rounds.get(server_round)
        if state is None:
            raise AggregationAbortedError(f"SecAgg+ round {server_round} was never set up")
        try:
            return self._aggregate(grid, state, replies=replies, length=length, timeout=timeout)
        finally:
            # One unmasking per round: a second call could ask for both secrets of a node.
            self._rounds.pop(server_round, None)

    def _aggregate(
        self,
        grid: Grid,
        state: _Round,
        *,
        replies: Sequence[Message],
        length: int,
        timeout: float,
    ) -> SecureSum:
        p, server_round = self._params, state.server_round
        dropped: dict[int, str] = {}
        vectors: dict[int, NDArray[np.uint64]] = {}
        for msg in replies:
            node = msg.metadata.src_node_id
            reason = self.check_reply(msg, length=length)
            if reason is None and node in vectors:
                reason = "duplicate reply"
            if reason is None and node not in state.shared:
                reason = f"node {node} did not complete key sharing in round {server_round}"
            if reason is not None:
                dropped[node] = reason
                continue
            vectors[node] = _blobs(msg)[_MASKED].numpy().astype(np.uint64)
        survivors = set(vectors)
        dead = set(state.shared) - survivors
        count = len(survivors)
        if count < self._min_survivors:
            raise AggregationAbortedError(
                f"only {count} masked vectors usable in round {server_round}, "
                f"min_survivors is {self._min_survivors}"
            )
        # Fail before asking anyone to reveal anything if a secret cannot be rebuilt.
        self._check_holders(state, survivors, survivors, dead, when="before unmasking")

        outgoing = {
            n: request(
                SecAggStage.UNMASK,
                round=server_round,
                active=[j for j in state.neighbours[n] if j in survivors],
                dead=[j for j in state.neighbours[n] if j in dead],
            )
            for n in sorted(survivors)
        }
        answers = self._exchange(grid, outgoing, server_round, timeout)
        b_shares: dict[int, list[bytes]] = {n: [] for n in survivors}
        sk_shares: dict[int, list[bytes]] = {n: [] for n in dead}
        responders: set[int] = set()
        for node, reply in answers.items():
            asked = outgoing[node].config_records[SECURE_RECORD]
            try:
                config, blobs = _config(reply), _blobs(reply)
                b_owners = _ids_field(config, "b-owners")
                sk_owners = _ids_field(config, "sk-owners")
                wanted = (_ids_field(asked, "active"), _ids_field(asked, "dead"))
                if (b_owners, sk_owners) != wanted:
                    continue
                got_b = [_blob_field(blobs, f"b-{j}") for j in b_owners]
                got_sk = [_blob_field(blobs, f"sk-{j}") for j in sk_owners]
            except ValueError:
                continue
            responders.add(node)
            for owner, share in zip(b_owners, got_b, strict=True):
                b_shares[owner].append(share)
            for owner, share in zip(sk_owners, got_sk, strict=True):
                sk_shares[owner].append(share)
        self._check_holders(state, survivors, responders, dead, when="after unmasking")

        total = np.zeros(length, dtype=np.uint64)
        for vector in vectors.values():
            total += vector  # uint64 wraps modulo 2**64, a multiple of the modulus
        for node in sorted(survivors):
            seed = self._combine(b_shares[node], node, "self-mask seed", server_round)
            if len(seed) != _SEED_BYTES:
                raise AggregationAbortedError(
                    f"node {node}'s reconstructed self-mask seed has {len(seed)} bytes"
                )
            total -= _prg(seed, _self_label(server_round, node), length, p.modulus_bits)
        for node in sorted(dead):
            secret = self._combine(sk_shares[node], node, "pairwise-mask key", server_round)
            try:
                private = _scalar_key(secret)
            except ValueError as exc:
                raise AggregationAbortedError(
                    f"node {node}'s sk1 did not reconstruct: {exc}"
                ) from None
            for other in state.neighbours[node]:
                if other not in survivors:
                    continue
                mask = _prg(
                    _pair_seed(private, _public_key(state.pk1[other])),
                    _pair_label(server_round, min(node, other), max(node, other)),
                    length,
                    p.modulus_bits,
                )
                # `other` added +mask if other > node, else -mask: undo it.
                if other > node:
                    total -= mask
                else:
                    total += mask
            del private, secret
        if p.modulus_bits < 64:
            total &= np.uint64(p.modulus - 1)
        if np.any(total > np.uint64(count * p.quantization_range)):
            raise AggregationAbortedError(
                f"round {server_round}: the unmasked sum exceeds {count} x quantization_range; "
                "the masks were not removed consistently (a client deviated from the protocol)"
            )
        return SecureSum(
            vector=_dequantize_sum(total, count, p),
            contributors=tuple(sorted(survivors)),
            dropped=dropped,
        )

    # ---------------------------------------------------------------- helpers

    def _require(self, count: int, server_round: int, what: str) -> None:
        if count < self._min_survivors:
            raise AggregationAbortedError(
                f"SecAgg+ round {server_round}: only {count} nodes {what}, "
                f"min_survivors is {self._min_survivors}"
            )

    def _check_holders(
        self,
        state: _Round,
        survivors: set[int],
        holders: set[int],
        dead: set[int],
        *,
        when: str,
    ) -> None:
        t = self._params.threshold
        for node in sorted(survivors):
            have = len(set(state.neighbours[node]) & holders)
            if have < t:
                raise AggregationAbortedError(
                    f"round {state.server_round} ({when}): the self-mask seed of node {node} "
                    f"has only {have} shares among the nodes that answer, "
                    f"reconstruction_threshold is {t}"
                )
        for node in sorted(dead):
            have = len((set(state.neighbours[node]) - {node}) & holders)
            if have < t:
                raise AggregationAbortedError(
                    f"round {state.server_round} ({when}): the pairwise-mask key of dropped node "
                    f"{node} has only {have} shares among the nodes that answer, "
                    f"reconstruction_threshold is {t}"
                )

    def _combine(self, shares: list[bytes], node: int, what: str, server_round: int) -> bytes:
        t = self._params.threshold
        distinct = list({share[:4]: share for share in shares if len(share) > 4}.values())
        if len(distinct) < t:
            raise AggregationAbortedError(
                f"round {server_round}: the {what} of node {node} has {len(distinct)} distinct "
                f"shares, reconstruction_threshold is {t}"
            )
        try:
            return combine_shares(distinct[:t])
        except ValueError as exc:
            raise AggregationAbortedError(
                f"round {server_round}: the {what} of node {node} did not reconstruct ({exc})"
            ) from None

    @staticmethod
    def _exchange(
        grid: Grid, contents: dict[int, RecordDict], server_round: int, timeout: float
    ) -> dict[int, Message]:
        """Send one stage request per node; the first well-formed reply of each node."""
        messages = [
            Message(content, node, SECURE_QUERY_TYPE, group_id=str(server_round))
            for node, content in contents.items()
        ]
        replies: dict[int, Message] = {}
        for reply in grid.send_and_receive(messages, timeout=timeout):
            node = reply.metadata.src_node_id
            if node not in contents or node in replies or reply.has_error():
                continue
            try:
                config = _config(reply)
                if (
                    stage_of(reply) != contents[node].config_records[SECURE_RECORD]["stage"]
                    or _round_of(config) != server_round
                ):
                    continue
            except ValueError:
                continue
            replies[node] = reply
        return replies


# --------------------------------------------------------------------------- client


def _refuse(msg: Message, reason: str) -> Message:
    return Message(
        Error(code=ErrorCode.SECURE, reason=f"SecAgg+ refused: {reason}"),
        reply_to=msg,
    )


class SecAggPlusClient(ClientProtocol):
    """A data holder's side of SecAgg+; its keys and shares live in ``context.state``.

    The state is one ConfigRecord (``"secaggplus"``) per node and run, holding
    the current round's key pairs, self-mask seed and the shares the node holds
    for its neighbours. It is wiped once the node has answered ``secagg-unmask``.
    A node masks at most one vector per round and answers at most one unmask
    request per round, so the server can never obtain both secrets of a node.

    Examples
    --------
    >>> client = SecAggPlusClient()
    >>> client.mode
    'secagg+'
    """

    mode: ClassVar[SecureMode] = "secagg+"

    # ---------------------------------------------------------------- queries

    def handle_query(self, msg: Message, context: Context) -> Message:
        """Answer ``secagg-setup``, ``secagg-share-keys`` or ``secagg-unmask``.

        A malformed or unsafe request gets an error reply naming what is wrong.
        """
        try:
            stage = stage_of(msg)
            config = _config(msg)
            server_round = _round_of(config)
            if stage == SecAggStage.SETUP:
                content = self._setup(config, server_round, msg.metadata.dst_node_id, context)
            elif stage == SecAggStage.SHARE_KEYS:
                content = self._share_keys(msg, server_round, context)
            elif stage == SecAggStage.UNMASK:
                content = self._unmask(config, server_round, context)
            else:
                raise ValueError(f"unknown SecAgg+ stage {stage!r}")
        except (ValueError, KeyError, TypeError) as exc:
            return _refuse(msg, str(exc))
        return Message(content, reply_to=msg)

    @staticmethod
    def _setup(config: ConfigRecord, server_round: int, node: int, context: Context) -> RecordDict:
        params = _check_params(
            num_shares=config.get("num-shares"),
            threshold=config.get("threshold"),
            clipping_range=config.get("clipping-range"),
            quantization_range=config.get("quantization-range"),
            modulus_bits=config.get("modulus-bits"),
            stochastic_rounding=config.get("stochastic-rounding"),
        )
        old = context.state.config_records.get(_STATE)
        last = int(cast(int, old.get("last-masked-round", -1))) if old is not None else -1
        if server_round <= last:
            raise ValueError(
                f"round {server_round} is not after round {last}, in which this node already "
                "sent a masked vector; a second session could reveal both of its secrets"
            )
        sk1, pk1 = generate_key_pairs()
        sk2, pk2 = generate_key_pairs()
        state = ConfigRecord(
            {
                "round": server_round,
                "node": node,
                "stage": SecAggStage.SETUP,
                "last-masked-round": last,
                **params.fields(),
                "sk1": private_key_to_bytes(sk1),
                "sk2": private_key_to_bytes(sk2),
                "pk1": public_key_to_bytes(pk1),
                "pk2": public_key_to_bytes(pk2),
            }
        )
        context.state.config_records[_STATE] = state
        return request(
            SecAggStage.SETUP,
            round=server_round,
            pk1=public_key_to_bytes(pk1),
            pk2=public_key_to_bytes(pk2),
        )

    def _share_keys(self, msg: Message, server_round: int, context: Context) -> RecordDict:
        state, params = self._state(context, server_round, SecAggStage.SETUP)
        node = int(cast(int, state["node"]))
        config, blobs = _config(msg), _blobs(msg)
        keyed = _ids_field(config, "keyed")
        if node not in keyed:
            raise ValueError(f"the list of keyed nodes does not contain this node ({node})")
        hood = _neighbours(keyed, node, num_shares=params.num_shares)
        if len(hood) < params.threshold:
            raise ValueError(
                f"only {len(hood)} nodes in the neighbourhood, "
                f"reconstruction_threshold is {params.threshold}"
            )
        others = [j for j in hood if j != node]
        pk1 = {j: _blob_field(blobs, f"pk1-{j}") for j in others}
        pk2 = {j: _blob_field(blobs, f"pk2-{j}") for j in others}
        extra = set(blobs) - {f"pk{s}-{j}" for s in (1, 2) for j in others}
        if extra:
            raise ValueError(f"unexpected blobs outside the neighbourhood: {sorted(extra)}")
        everything = [*pk1.values(), *pk2.values(), _state_bytes(state, "pk1")]
        everything.append(_state_bytes(state, "pk2"))
        if len(set(everything)) != len(everything):
            raise ValueError("some public keys are identical (a node would stand in for another)")
        for j in others:
            _public_key(pk1[j])
        sk2 = bytes_to_private_key(_state_bytes(state, "sk2"))
        sk1 = bytes_to_private_key(_state_bytes(state, "sk1"))
        seed = os.urandom(_SEED_BYTES)
        b_shares = create_shares(seed, params.threshold, len(hood))
        sk_shares = create_shares(_scalar_bytes(sk1), params.threshold, len(hood))
        ciphertexts: dict[str, bytes] = {}
        for index, j in enumerate(hood):
            if j == node:
                state["own-b-share"], state["own-sk-share"] = b_shares[index], sk_shares[index]
                continue
            key = generate_shared_key(sk2, _public_key(pk2[j]))
            plaintext = share_keys_plaintext_concat(node, j, b_shares[index], sk_shares[index])
            ciphertexts[f"to-{j}"] = encrypt(key, plaintext)
        state.update(
            {
                "stage": SecAggStage.SHARE_KEYS,
                "seed": seed,
                "keyed": keyed,
                "nb-ids": others,
                "nb-pk1": [pk1[j] for j in others],
                "nb-pk2": [pk2[j] for j in others],
            }
        )
        return request(
            SecAggStage.SHARE_KEYS, round=server_round, destinations=others, **ciphertexts
        )

    def _unmask(self, config: ConfigRecord, server_round: int, context: Context) -> RecordDict:
        state, params = self._state(context, server_round, SecAggStage.TRAIN)
        node = int(cast(int, state["node"]))
        active = _ids_field(config, "active")
        dead = _ids_field(config, "dead")
        both = sorted(set(active) & set(dead))
        if both:
            raise ValueError(
                f"nodes {both} are listed both active and dead; answering would reveal both "
                "their self-mask seed and their pairwise-mask key"
            )
        if node in dead:
            raise ValueError(f"this node ({node}) is listed as dead")
        held = {*_state_ids(state, "held-ids"), node}
        unknown = sorted((set(active) | set(dead)) - held)
        if unknown:
            raise ValueError(
                f"nodes {unknown} are not neighbours that shared keys with this node "
                f"in round {server_round}"
            )
        if len(active) < params.threshold:
            raise ValueError(
                f"only {len(active)} active neighbours listed, "
                f"reconstruction_threshold is {params.threshold}"
            )
        held_ids = _state_ids(state, "held-ids")
        b_held = dict(zip(held_ids, _state_bytes_list(state, "held-b"), strict=True))
        sk_held = dict(zip(held_ids, _state_bytes_list(state, "held-sk"), strict=True))
        b_held[node] = _state_bytes(state, "own-b-share")
        sk_held[node] = _state_bytes(state, "own-sk-share")
        blobs = {f"b-{j}": b_held[j] for j in active}
        blobs.update({f"sk-{j}": sk_held[j] for j in dead})
        # Forget the round's secrets: a second unmask request must find nothing to reveal.
        context.state.config_records[_STATE] = ConfigRecord(
            {"round": server_round, "stage": SecAggStage.UNMASK, "last-masked-round": server_round}
        )
        return request(
            SecAggStage.UNMASK,
            round=server_round,
            **{"b-owners": active, "sk-owners": dead},
            **blobs,
        )

    # ---------------------------------------------------------------- train

    def protect(self, vector: NDArray[np.float64], msg: Message, context: Context) -> ArrayRecord:
        """Quantize ``vector`` and add its self mask and pairwise masks.

        Parameters
        ----------
        vector : NDArray[np.float64]
            This client's flat vector, every value within ``±clipping_range``.
        msg : Message
            The train message, carrying the records that
            :meth:`SecAggPlusServer.setup` produced for this node.
        context : Context
            This node's context (its SecAgg+ state).

        Returns
        -------
        ArrayRecord
            ``{"masked": uint32 or uint64 array}``, for the reply's :data:`SECURE_BLOBS`.

        Raises
        ------
        ValueError
            If the vector is not a finite 1-d float array within the clipping
            range (values are never clamped), if the message does not carry a
            consistent SecAgg+ train record for the current round, or if this
            node already masked a vector this round.
        """
        config = _config(msg)
        if config.get("stage") != SecAggStage.TRAIN:
            raise ValueError(f"train message has no {SecAggStage.TRAIN!r} record")
        server_round = _round_of(config)
        state, params = self._state(context, server_round, SecAggStage.SHARE_KEYS)
        values = np.asarray(vector)
        if values.ndim != 1 or values.size == 0 or not np.issubdtype(values.dtype, np.floating):
            raise ValueError(
                f"expected a non-empty 1-d float vector, got {values.dtype} of shape {values.shape}"
            )
        values = values.astype(np.float64, copy=False)
        if not np.all(np.isfinite(values)):
            raise ValueError(f"vector has {int(np.sum(~np.isfinite(values)))} non-finite values")
        peak = float(np.max(np.abs(values)))
        if peak > params.clipping_range:
            raise ValueError(
                f"vector value out of range: max |value| = {peak:.6g} exceeds clipping_range "
                f"{params.clipping_range:g}; SecAgg+ does not clamp, clip or rescale the update "
                "before protecting it"
            )
        node = int(cast(int, state["node"]))
        keyed = _state_ids(state, "keyed")
        shared = _ids_field(config, "shared")
        if node not in shared or not set(shared) <= set(keyed):
            raise ValueError("the list of nodes that shared keys is inconsistent with key setup")
        hood = _neighbours(keyed, node, num_shares=params.num_shares)
        expected = [j for j in hood if j != node and j in shared]
        sources = _ids_field(config, "sources")
        if sorted(sources) != expected:
            raise ValueError(
                f"shares forwarded from {sorted(sources)}, expected the neighbours that "
                f"shared keys: {expected}"
            )
        if len(expected) + 1 < params.threshold:
            raise ValueError(
                f"only {len(expected) + 1} holders of this node's secrets remain, "
                f"reconstruction_threshold is {params.threshold}"
            )
        blobs = _blobs(msg)
        sk2 = bytes_to_private_key(_state_bytes(state, "sk2"))
        nb_ids = _state_ids(state, "nb-ids")
        pk1 = dict(zip(nb_ids, _state_bytes_list(state, "nb-pk1"), strict=True))
        pk2 = dict(zip(nb_ids, _state_bytes_list(state, "nb-pk2"), strict=True))
        held_b: list[bytes] = []
        held_sk: list[bytes] = []
        for j in expected:
            key = generate_shared_key(sk2, _public_key(pk2[j]))
            try:
                plaintext = decrypt(key, _blob_field(blobs, f"from-{j}"))
            except InvalidToken:
                raise ValueError(f"the shares forwarded from node {j} do not decrypt") from None
            src, dst, b_share, sk_share = share_keys_plaintext_separate(plaintext)
            if (src, dst) != (j, node):
                raise ValueError(f"shares forwarded from node {j} claim to be {src} -> {dst}")
            held_b.append(b_share)
            held_sk.append(sk_share)

        length = values.size
        masked = _quantize(values, params)
        masked += _prg(
            _state_bytes(state, "seed"),
            _self_label(server_round, node),
            length,
            params.modulus_bits,
        )
        sk1 = bytes_to_private_key(_state_bytes(state, "sk1"))
        for j in expected:
            mask = _prg(
                _pair_seed(sk1, _public_key(pk1[j])),
                _pair_label(server_round, min(node, j), max(node, j)),
                length,
                params.modulus_bits,
            )
            if node > j:
                masked += mask
            else:
                masked -= mask
        if params.modulus_bits < 64:
            masked &= np.uint64(params.modulus - 1)
        state.update(
            {
                "stage": SecAggStage.TRAIN,
                "last-masked-round": server_round,
                "held-ids": expected,
                "held-b": held_b,
                "held-sk": held_sk,
            }
        )
        del state["seed"], state["sk1"], state["sk2"]  # recoverable only through shares now
        return ArrayRecord({_MASKED: Array(masked.astype(params.wire_dtype))})

    # ---------------------------------------------------------------- state

    @staticmethod
    def _state(context: Context, server_round: int, after: str) -> tuple[ConfigRecord, _Params]:
        """The node's state for ``server_round``, which must have just completed ``after``."""
        state = context.state.config_records.get(_STATE)
        if state is None or state.get("round") != server_round:
            have = None if state is None else state.get("round")
            raise ValueError(
                f"no SecAgg+ session for round {server_round} on this node (it has {have!r})"
            )
        if state.get("stage") != after:
            raise ValueError(
                f"round {server_round} is at stage {state.get('stage')!r}, "
                f"this request must follow {after!r}"
            )
        params = _check_params(
            num_shares=state["num-shares"],
            threshold=state["threshold"],
            clipping_range=state["clipping-range"],
            quantization_range=state["quantization-range"],
            modulus_bits=state["modulus-bits"],
            stochastic_rounding=state["stochastic-rounding"],
        )
        return state, params
