"""The aggregator's side of SecAgg+: key setup, share forwarding, unmasking, dequantization.

The server holds public keys only. :meth:`SecAggPlusServer.setup` runs
``secagg-setup`` and ``secagg-share-keys`` and forwards each node the
encrypted shares addressed to it; :meth:`SecAggPlusServer.aggregate` sums the
masked vectors, asks the survivors for the shares that remove the masks
(``secagg-unmask``), reconstructs the seeds and keys, and dequantizes. See
:mod:`fedlearn.privacy.secure.secaggplus` for the protocol.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
from flwr.app import Message, RecordDict
from flwr.common.secure_aggregation.crypto.shamir import combine_shares
from flwr.serverapp import Grid
from numpy.typing import NDArray

from fedlearn.config import SecureMode
from fedlearn.privacy.secure.base import (
    AggregationAbortedError,
    SecureSum,
    ServerProtocol,
    request,
)
from fedlearn.privacy.secure.secaggplus.parameters import check_parameters, is_integer
from fedlearn.privacy.secure.secaggplus.primitives import (
    MASKED_BLOB,
    SEED_BYTES,
    dequantize_sum,
    load_public_key,
    neighbours,
    pair_mask,
    scalar_key,
    self_mask,
)
from fedlearn.privacy.secure.stages import (
    StageFields,
    check_node_ids,
    error_reason,
    exchange,
    read_answers,
    read_blob,
    read_node_ids,
    read_protected_reply,
)
from fedlearn.wire import SECURE_BLOBS, SECURE_RECORD, SecAggStage

__all__ = ["SecAggPlusServer"]

#: Float64 slack of the error bound, per contributor and unit of clipping range.
_FLOAT_SLACK = 2.0**-44


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
            not is_integer(modulus_range)
            or not 2**8 <= modulus_range <= 2**64
            or modulus_range & (modulus_range - 1) != 0
        ):
            raise ValueError(
                f"modulus_range must be a power of two in [2**8, 2**64], got {modulus_range!r}"
            )
        self._params = check_parameters(
            num_shares=num_shares,
            threshold=reconstruction_threshold,
            clipping_range=clipping_range,
            quantization_range=quantization_range,
            modulus_bits=int(modulus_range).bit_length() - 1,
            stochastic_rounding=stochastic_rounding,
        )
        if min_survivors is None:
            min_survivors = self._params.threshold
        if not is_integer(min_survivors) or min_survivors < 2:
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
        if not is_integer(num_contributors) or num_contributors < 1:
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
        if not is_integer(server_round) or server_round < 0:
            raise ValueError(f"server_round must be an integer >= 0, got {server_round!r}")
        if not isinstance(timeout, int | float) or not timeout > 0:
            raise ValueError(f"timeout must be a number > 0, got {timeout!r}")
        ids = check_node_ids(node_ids)
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
        answers = self._answers(
            grid,
            SecAggStage.SETUP,
            {n: request(SecAggStage.SETUP, round=server_round, **p.fields()) for n in ids},
            server_round,
            timeout,
        )
        pk2: dict[int, bytes] = {}
        seen_keys: set[bytes] = set()
        for node, (_, blobs) in answers.items():
            try:
                keys = (read_blob(blobs, "pk1"), read_blob(blobs, "pk2"))
                for key in keys:
                    load_public_key(key)
            except ValueError:
                continue
            if keys[0] == keys[1] or seen_keys & set(keys):
                continue  # a reused key would let one node stand in for another
            seen_keys.update(keys)
            state.pk1[node], pk2[node] = keys
        state.keyed = tuple(sorted(state.pk1))
        self._require(len(state.keyed), server_round, "answered secagg-setup")
        state.neighbours = {
            n: neighbours(state.keyed, n, num_shares=p.num_shares) for n in state.keyed
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
        answers = self._answers(grid, SecAggStage.SHARE_KEYS, outgoing, server_round, timeout)
        ciphertexts: dict[tuple[int, int], bytes] = {}  # (source, destination) -> ciphertext
        for node, (config, blobs) in answers.items():
            expected = {j for j in state.neighbours[node] if j != node}
            try:
                destinations = read_node_ids(config, "destinations")
                if set(destinations) != expected:
                    continue
                found = {j: read_blob(blobs, f"to-{j}") for j in destinations}
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
        if not is_integer(length) or length < 1:
            raise ValueError(f"length must be an integer >= 1, got {length!r}")
        reason = error_reason(msg)
        if reason is not None:
            return reason
        node = msg.metadata.src_node_id
        if self._rounds and not any(node in r.shared for r in self._rounds.values()):
            return f"node {node} was not given key shares in any open SecAgg+ round"
        blobs = msg.content.array_records.get(SECURE_BLOBS)
        if blobs is None or MASKED_BLOB not in blobs:
            return f"no masked vector (ArrayRecord {SECURE_BLOBS!r} with {MASKED_BLOB!r})"
        array = blobs[MASKED_BLOB]
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
            vectors[node] = read_protected_reply(msg)[MASKED_BLOB].numpy().astype(np.uint64)
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
        answers = self._answers(grid, SecAggStage.UNMASK, outgoing, server_round, timeout)
        b_shares: dict[int, list[bytes]] = {n: [] for n in survivors}
        sk_shares: dict[int, list[bytes]] = {n: [] for n in dead}
        responders: set[int] = set()
        for node, (config, blobs) in answers.items():
            asked = outgoing[node].config_records[SECURE_RECORD]
            try:
                b_owners = read_node_ids(config, "b-owners")
                sk_owners = read_node_ids(config, "sk-owners")
                wanted = (read_node_ids(asked, "active"), read_node_ids(asked, "dead"))
                if (b_owners, sk_owners) != wanted:
                    continue
                got_b = [read_blob(blobs, f"b-{j}") for j in b_owners]
                got_sk = [read_blob(blobs, f"sk-{j}") for j in sk_owners]
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
            if len(seed) != SEED_BYTES:
                raise AggregationAbortedError(
                    f"node {node}'s reconstructed self-mask seed has {len(seed)} bytes"
                )
            total -= self_mask(
                seed,
                server_round=server_round,
                node=node,
                length=length,
                modulus_bits=p.modulus_bits,
            )
        for node in sorted(dead):
            secret = self._combine(sk_shares[node], node, "pairwise-mask key", server_round)
            try:
                private = scalar_key(secret)
            except ValueError as exc:
                raise AggregationAbortedError(
                    f"node {node}'s sk1 did not reconstruct: {exc}"
                ) from None
            for other in state.neighbours[node]:
                if other not in survivors:
                    continue
                mask = pair_mask(
                    private,
                    state.pk1[other],
                    server_round=server_round,
                    pair=(node, other),
                    length=length,
                    modulus_bits=p.modulus_bits,
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
            vector=dequantize_sum(total, count, p),
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
    def _answers(
        grid: Grid,
        stage: SecAggStage,
        requests_by_node: dict[int, RecordDict],
        server_round: int,
        timeout: float,
    ) -> dict[int, StageFields]:
        """Send one ``stage`` request per node; the records of each node's answer for the round."""
        replies = exchange(grid, requests_by_node, server_round=server_round, timeout=timeout)
        return read_answers(replies, stage, server_round=server_round)
