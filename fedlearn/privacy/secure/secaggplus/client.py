"""A data holder's side of SecAgg+: key pairs, shares, masking, unmasking answers.

A node's round state (key pairs, self-mask seed, the shares it holds for its
neighbours) is one ConfigRecord in ``context.state``, checked at every stage
against the stage it must follow, and wiped once the node has answered
``secagg-unmask``. See :mod:`fedlearn.privacy.secure.secaggplus` for the
protocol.
"""

from __future__ import annotations

import logging
import os
from typing import ClassVar, cast

import numpy as np
from cryptography.fernet import InvalidToken
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.common.secure_aggregation.crypto.shamir import create_shares
from flwr.common.secure_aggregation.crypto.symmetric_encryption import (
    decrypt,
    encrypt,
    generate_shared_key,
)
from flwr.common.secure_aggregation.secaggplus_utils import (
    share_keys_plaintext_concat,
    share_keys_plaintext_separate,
)
from flwr.supercore.primitives.asymmetric import (
    bytes_to_private_key,
    generate_key_pairs,
    private_key_to_bytes,
    public_key_to_bytes,
)
from numpy.typing import NDArray

from fedlearn.config import SecureMode
from fedlearn.privacy.policy import PolicyError, check_floor
from fedlearn.privacy.secure.base import ClientProtocol, request, stage_of
from fedlearn.privacy.secure.secaggplus.parameters import SecAggPlusParameters, is_integer
from fedlearn.privacy.secure.secaggplus.primitives import (
    MASKED_BLOB,
    SEED_BYTES,
    load_public_key,
    neighbours,
    pair_mask,
    quantize,
    scalar_bytes,
    self_mask,
)
from fedlearn.privacy.secure.stages import (
    read_blob,
    read_fields,
    read_int,
    read_node_ids,
    refusal,
)
from fedlearn.wire import SecAggStage

__all__ = ["SecAggPlusClient", "shared_nodes"]

log = logging.getLogger(__name__)

#: Name of the client's ConfigRecord in ``context.state``.
_STATE = "secaggplus"


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
            config, _ = read_fields(msg)
            server_round = read_int(config, "round", minimum=0)
            if stage == SecAggStage.SETUP:
                content = self._setup(config, server_round, msg.metadata.dst_node_id, context)
            elif stage == SecAggStage.SHARE_KEYS:
                content = self._share_keys(msg, server_round, context)
            elif stage == SecAggStage.UNMASK:
                content = self._unmask(config, server_round, context)
            else:
                raise ValueError(f"unknown SecAgg+ stage {stage!r}")
        except PolicyError:
            raise  # the holder's policy answers it (ErrorCode.POLICY)
        except (ValueError, KeyError, TypeError) as exc:
            return refusal(msg, f"SecAgg+ refused: {exc}")
        return Message(content, reply_to=msg)

    @staticmethod
    def _setup(config: ConfigRecord, server_round: int, node: int, context: Context) -> RecordDict:
        params = SecAggPlusParameters.from_fields(config)
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
        config, blobs = read_fields(msg)
        keyed = read_node_ids(config, "keyed")
        if node not in keyed:
            raise ValueError(f"the list of keyed nodes does not contain this node ({node})")
        # The holder's floor: the round's sum holds at most the keyed nodes.
        check_floor(len(keyed), context, what="the SecAgg+ key-sharing request")
        hood = neighbours(keyed, node, num_shares=params.num_shares)
        if len(hood) < params.threshold:
            raise ValueError(
                f"only {len(hood)} nodes in the neighbourhood, "
                f"reconstruction_threshold is {params.threshold}"
            )
        others = [j for j in hood if j != node]
        pk1 = {j: read_blob(blobs, f"pk1-{j}") for j in others}
        pk2 = {j: read_blob(blobs, f"pk2-{j}") for j in others}
        extra = set(blobs) - {f"pk{s}-{j}" for s in (1, 2) for j in others}
        if extra:
            raise ValueError(f"unexpected blobs outside the neighbourhood: {sorted(extra)}")
        everything = [*pk1.values(), *pk2.values(), _state_bytes(state, "pk1")]
        everything.append(_state_bytes(state, "pk2"))
        if len(set(everything)) != len(everything):
            raise ValueError("some public keys are identical (a node would stand in for another)")
        for j in others:
            load_public_key(pk1[j])
        sk2 = bytes_to_private_key(_state_bytes(state, "sk2"))
        sk1 = bytes_to_private_key(_state_bytes(state, "sk1"))
        seed = os.urandom(SEED_BYTES)
        b_shares = create_shares(seed, params.threshold, len(hood))
        sk_shares = create_shares(scalar_bytes(sk1), params.threshold, len(hood))
        ciphertexts: dict[str, bytes] = {}
        for index, j in enumerate(hood):
            if j == node:
                state["own-b-share"], state["own-sk-share"] = b_shares[index], sk_shares[index]
                continue
            key = generate_shared_key(sk2, load_public_key(pk2[j]))
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
        active = read_node_ids(config, "active")
        dead = read_node_ids(config, "dead")
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
        # The holder's floor. With every keyed node in this node's neighbourhood the
        # active list is the whole set of survivors, i.e. the sum's contributors. In a
        # partial neighbourhood (num_shares < keyed nodes) the client sees only its
        # neighbours: the floor was checked on the nodes that shared keys (train), and
        # the survivors beyond its neighbourhood are the server's word.
        keyed = _state_ids(state, "keyed")
        if len(neighbours(keyed, node, num_shares=params.num_shares)) == len(keyed):
            check_floor(len(active), context, what="the SecAgg+ unmask request")
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
        config, blobs = read_fields(msg, SecAggStage.TRAIN)
        server_round = read_int(config, "round", minimum=0)
        state, params = self._state(context, server_round, SecAggStage.SHARE_KEYS)
        values = np.asarray(vector)
        if values.ndim != 1 or values.size == 0 or not np.issubdtype(values.dtype, np.floating):
            raise ValueError(
                f"expected a non-empty 1-d float vector, got {values.dtype} of shape {values.shape}"
            )
        values = values.astype(np.float64, copy=False)
        # Refusals name the rule, never a figure of the unprotected update (it would
        # reach the server in the clear); the figure is logged here, on the holder.
        if not np.all(np.isfinite(values)):
            log.warning("SecAgg+: %d non-finite values", int(np.sum(~np.isfinite(values))))
            raise ValueError("the update has non-finite values")
        peak = float(np.max(np.abs(values)))
        if peak > params.clipping_range:
            log.warning(
                "SecAgg+: max |value| of this node's update is %.6g > clipping_range %g",
                peak,
                params.clipping_range,
            )
            raise ValueError(
                f"update out of range: a value exceeds clipping_range {params.clipping_range:g}; "
                "SecAgg+ does not clamp, clip or rescale the update before protecting it"
            )
        node = int(cast(int, state["node"]))
        keyed = _state_ids(state, "keyed")
        shared = read_node_ids(config, "shared")
        if node not in shared or not set(shared) <= set(keyed):
            raise ValueError("the list of nodes that shared keys is inconsistent with key setup")
        hood = neighbours(keyed, node, num_shares=params.num_shares)
        expected = [j for j in hood if j != node and j in shared]
        sources = read_node_ids(config, "sources")
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
        sk2 = bytes_to_private_key(_state_bytes(state, "sk2"))
        nb_ids = _state_ids(state, "nb-ids")
        pk1 = dict(zip(nb_ids, _state_bytes_list(state, "nb-pk1"), strict=True))
        pk2 = dict(zip(nb_ids, _state_bytes_list(state, "nb-pk2"), strict=True))
        held_b: list[bytes] = []
        held_sk: list[bytes] = []
        for j in expected:
            key = generate_shared_key(sk2, load_public_key(pk2[j]))
            try:
                plaintext = decrypt(key, read_blob(blobs, f"from-{j}"))
            except InvalidToken:
                raise ValueError(f"the shares forwarded from node {j} do not decrypt") from None
            src, dst, b_share, sk_share = share_keys_plaintext_separate(plaintext)
            if (src, dst) != (j, node):
                raise ValueError(f"shares forwarded from node {j} claim to be {src} -> {dst}")
            held_b.append(b_share)
            held_sk.append(sk_share)

        length = values.size
        masked = quantize(values, params)
        masked += self_mask(
            _state_bytes(state, "seed"),
            server_round=server_round,
            node=node,
            length=length,
            modulus_bits=params.modulus_bits,
        )
        sk1 = bytes_to_private_key(_state_bytes(state, "sk1"))
        for j in expected:
            mask = pair_mask(
                sk1,
                pk1[j],
                server_round=server_round,
                pair=(node, j),
                length=length,
                modulus_bits=params.modulus_bits,
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
        return ArrayRecord({MASKED_BLOB: Array(masked.astype(params.wire_dtype))})

    # ---------------------------------------------------------------- state

    @staticmethod
    def _state(
        context: Context, server_round: int, after: str
    ) -> tuple[ConfigRecord, SecAggPlusParameters]:
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
        return state, SecAggPlusParameters.from_fields(state)


def shared_nodes(msg: Message) -> list[int]:
    """The nodes that shared keys, as a ``secagg-train`` message lists them."""
    config, _ = read_fields(msg, SecAggStage.TRAIN)
    return read_node_ids(config, "shared")


def _state_bytes(state: ConfigRecord, key: str) -> bytes:
    value = state[key]
    if not isinstance(value, bytes):
        raise ValueError(f"SecAgg+ state field {key!r} is not bytes")
    return value


def _state_ids(state: ConfigRecord, key: str) -> list[int]:
    value = state[key]
    if not isinstance(value, list) or not all(is_integer(v) for v in value):
        raise ValueError(f"SecAgg+ state field {key!r} is not a list of node ids")
    return [int(cast(int, v)) for v in value]


def _state_bytes_list(state: ConfigRecord, key: str) -> list[bytes]:
    value = state[key]
    if not isinstance(value, list) or not all(isinstance(v, bytes) for v in value):
        raise ValueError(f"SecAgg+ state field {key!r} is not a list of bytes")
    return cast(list[bytes], value)
