"""A data holder's side of CKKS mode: the key ceremony's stages, encryption, decryption.

The node's CKKS secrets (its registration key while a ceremony runs, then the
serialized secret context) live in one ConfigRecord of ``context.state``.
Stage by stage (see :mod:`fedlearn.privacy.secure.ckks`): ``ckks-register``
makes an X25519 key pair, ``ckks-deal`` makes the key and seals it to the
listed nodes, ``ckks-reshare`` seals the held key to newcomers, ``ckks-key``
opens and checks a sealed key, ``ckks-decrypt`` floods and decrypts a sum.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, RecordDict
from numpy.typing import NDArray

from fedlearn.config import SecureMode
from fedlearn.privacy.secure.base import ClientProtocol, blob, request, stage_of
from fedlearn.privacy.secure.ckks.parameters import (
    CkksParameters,
    parameters_and_min_contributors,
)
from fedlearn.privacy.secure.ckks.primitives import (
    CkksRing,
    key_fingerprint,
    new_secret_context,
    secret_context_label,
)
from fedlearn.privacy.secure.envelope import generate_keypair, open_envelope, seal
from fedlearn.privacy.secure.stages import (
    read_blob,
    read_fields,
    read_int,
    read_node_ids,
    read_str,
    refusal,
)
from fedlearn.wire import SECURE_BLOBS, SECURE_RECORD, CkksStage

__all__ = ["CkksClient"]

#: Where a node keeps its CKKS secrets in ``context.state`` (a ConfigRecord).
_STATE = "fedlearn.secure.ckks"


class CkksClient(ClientProtocol):
    """A data holder's side of CKKS mode: key ceremony, encryption, decryption of sums.

    Parameters
    ----------
    parameters : CkksParameters, optional
        Must equal the server's (default ``CkksParameters()``); a key made
        under other parameters is refused.
    min_contributors : int, default 2
        This node refuses to decrypt a sum that names fewer contributors
        (defence in depth: it cannot check what the ciphertext really sums).

    Examples
    --------
    >>> client = CkksClient(min_contributors=3)
    >>> reply = client.handle_query(msg, context)  # doctest: +SKIP
    >>> blobs = client.protect(vector, train_msg, context)  # doctest: +SKIP
    """

    mode: ClassVar[SecureMode] = "ckks"

    def __init__(
        self, *, parameters: CkksParameters | None = None, min_contributors: int = 2
    ) -> None:
        self._params, self._min_contributors = parameters_and_min_contributors(
            parameters, min_contributors
        )

    def handle_query(self, msg: Message, context: Context) -> Message:
        """Answer a CKKS stage request; refusals are error replies naming the reason."""
        handlers: dict[str, Callable[[Message, Context], RecordDict]] = {
            CkksStage.REGISTER: self._register,
            CkksStage.DEAL: self._deal,
            CkksStage.RESHARE: self._reshare,
            CkksStage.KEY: self._receive_key,
            CkksStage.DECRYPT: self._decrypt,
        }
        try:
            stage = stage_of(msg)
            if stage not in handlers:
                raise ValueError(f"unknown CKKS stage {stage!r}")
            content = handlers[stage](msg, context)
        except (ValueError, RuntimeError, TypeError) as exc:
            return refusal(msg, f"CKKS: {exc}")
        return Message(content, reply_to=msg)

    # -- node state ----------------------------------------------------------------------

    @staticmethod
    def _state(context: Context) -> ConfigRecord:
        if _STATE not in context.state.config_records:
            context.state[_STATE] = ConfigRecord()
        return context.state.config_records[_STATE]

    def _held_key(self, context: Context) -> tuple[str, str, bytes]:
        state = self._state(context)
        secret = state.get("secret-context")
        if not isinstance(secret, bytes):
            raise ValueError("this node holds no CKKS key")
        return str(state["ceremony-id"]), str(state["fingerprint"]), secret

    # -- stages ----------------------------------------------------------------------------

    def _register(self, msg: Message, context: Context) -> RecordDict:
        config, _ = read_fields(msg, CkksStage.REGISTER)
        ceremony_id = read_str(config, "ceremony-id")
        private, public = generate_keypair()
        state = self._state(context)
        state["x25519-private"] = private
        state["registered-for"] = ceremony_id
        return request(CkksStage.REGISTER, **{"public-key": public})

    def _seal_to(
        self, config: ConfigRecord, blobs: ArrayRecord, secret: bytes, context: Context
    ) -> dict[str, bytes]:
        ceremony_id = read_str(config, "ceremony-id")
        envelopes = {}
        for node in read_node_ids(config, "recipients"):
            key = read_blob(blobs, f"pk-{node}")
            if node == context.node_id:
                raise ValueError("asked to seal the key to this node itself")
            label = secret_context_label(context.run_id, ceremony_id, node)
            envelopes[f"env-{node}"] = seal(key, secret, label=label)
        return envelopes

    def _deal(self, msg: Message, context: Context) -> RecordDict:
        config, blobs = read_fields(msg, CkksStage.DEAL)
        ceremony_id = read_str(config, "ceremony-id")
        state = self._state(context)
        if state.get("registered-for") != ceremony_id:
            raise ValueError(f"this node did not register for ceremony {ceremony_id}")
        secret, public_context = new_secret_context(self._params)
        envelopes = self._seal_to(config, blobs, secret, context)
        fingerprint = key_fingerprint(secret)
        self._keep(context, ceremony_id, fingerprint, secret)
        return request(
            CkksStage.DEAL,
            fingerprint=fingerprint,
            **{"public-context": public_context},
            **envelopes,
        )

    def _reshare(self, msg: Message, context: Context) -> RecordDict:
        config, blobs = read_fields(msg, CkksStage.RESHARE)
        ceremony_id, fingerprint, secret = self._held_key(context)
        if read_str(config, "ceremony-id") != ceremony_id:
            raise ValueError(f"this node holds the key of ceremony {ceremony_id}, not that one")
        envelopes = self._seal_to(config, blobs, secret, context)
        return request(CkksStage.RESHARE, fingerprint=fingerprint, **envelopes)

    def _receive_key(self, msg: Message, context: Context) -> RecordDict:
        config, blobs = read_fields(msg, CkksStage.KEY)
        ceremony_id = read_str(config, "ceremony-id")
        expected = read_str(config, "fingerprint")
        state = self._state(context)
        private = state.get("x25519-private")
        if state.get("registered-for") != ceremony_id or not isinstance(private, bytes):
            raise ValueError(f"this node did not register for ceremony {ceremony_id}")
        label = secret_context_label(context.run_id, ceremony_id, context.node_id)
        # EnvelopeError is a ValueError: the reply names why the envelope does not open.
        secret = open_envelope(private, read_blob(blobs, "envelope"), label=label)
        CkksRing(self._params, secret_context=secret)  # parameters and key load, or ValueError
        fingerprint = key_fingerprint(secret)
        if fingerprint != expected:
            raise ValueError("the key in the envelope does not match the announced fingerprint")
        self._keep(context, ceremony_id, fingerprint, secret)
        return request(CkksStage.KEY, fingerprint=fingerprint)

    def _keep(self, context: Context, ceremony_id: str, fingerprint: str, secret: bytes) -> None:
        state = self._state(context)
        for stale in ("x25519-private", "registered-for"):
            if stale in state:
                del state[stale]
        state["ceremony-id"] = ceremony_id
        state["fingerprint"] = fingerprint
        state["secret-context"] = secret

    def _decrypt(self, msg: Message, context: Context) -> RecordDict:
        config, blobs = read_fields(msg, CkksStage.DECRYPT)
        _, fingerprint, secret = self._held_key(context)
        if read_str(config, "fingerprint") != fingerprint:
            raise ValueError("the sum is under another key (fingerprint differs)")
        contributors = read_node_ids(config, "contributors")
        if len(contributors) < self._min_contributors:
            raise ValueError(
                f"refusing to decrypt a sum of {len(contributors)} contributor(s): this node "
                f"requires at least {self._min_contributors}"
            )
        length = read_int(config, "length")
        count = self._params.ciphertext_count(length)
        if set(blobs) != {f"sum-{i}" for i in range(count)}:
            raise ValueError(f"expected {count} chunks sum-0..sum-{count - 1} for length {length}")
        ring = CkksRing(self._params, secret_context=secret)
        slots, parts = self._params.slots, []
        for i in range(count):
            ct = ring.load(read_blob(blobs, f"sum-{i}"))
            size = min(slots, length - i * slots)
            parts.append(ring.decrypt_flooded(ct, count=size, n_clients=len(contributors)))
        vector = np.concatenate(parts)
        return RecordDict(
            {
                SECURE_RECORD: ConfigRecord({"stage": CkksStage.DECRYPT}),
                SECURE_BLOBS: ArrayRecord({"sum": Array(vector)}),
            }
        )

    # -- training ----------------------------------------------------------------------------

    def protect(self, vector: NDArray[np.float64], msg: Message, context: Context) -> ArrayRecord:
        """Encrypt ``vector`` under the key the train message names.

        Returns the :data:`SECURE_BLOBS` record: ``ct-0 … ct-{k-1}`` (seeded symmetric
        CKKS ciphertexts, ``slots`` values each) and ``key`` (the key's
        fingerprint). ``ValueError`` if the message names another key, the node
        holds none, or the vector is not a finite 1-d vector with entries up to
        ``max_abs_value``.
        """
        config, _ = read_fields(msg, CkksStage.TRAIN)
        ceremony_id, fingerprint, secret = self._held_key(context)
        if config.get("fingerprint") != fingerprint or config.get("ceremony-id") != ceremony_id:
            raise ValueError(
                f"the train message asks for key {config.get('fingerprint')!r}, this node holds "
                f"{fingerprint!r}: refusing to encrypt"
            )
        values = np.asarray(vector)
        if values.ndim != 1 or values.size == 0 or not np.issubdtype(values.dtype, np.number):
            raise ValueError(f"expected a non-empty 1-d numeric vector, got shape {values.shape}")
        values = values.astype(np.float64)
        if not np.all(np.isfinite(values)):
            raise ValueError("the vector has non-finite entries")
        largest = float(np.max(np.abs(values)))
        if largest > self._params.max_abs_value:
            raise ValueError(
                f"an entry has |v| = {largest:.4g} > max_abs_value = "
                f"{self._params.max_abs_value}: the encrypted sum could overflow; clip or "
                "rescale the update"
            )
        ring = CkksRing(self._params, secret_context=secret)
        record = ArrayRecord({f"ct-{i}": blob(ct) for i, ct in enumerate(ring.encrypt(values))})
        record["key"] = blob(bytes.fromhex(fingerprint))
        return record
