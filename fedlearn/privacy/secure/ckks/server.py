"""The aggregator's side of CKKS mode: key ceremony, ciphertext checks, sum, decryption request.

The server never holds a secret key: it relays sealed envelopes during the
key ceremony (:meth:`CkksServer.setup`), checks and adds the contributors'
ciphertexts, and asks one contributor to decrypt the sum
(:meth:`CkksServer.aggregate`). See :mod:`fedlearn.privacy.secure.ckks` for
the threat model.
"""

from __future__ import annotations

import contextlib
import math
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
from flwr.app import Array, ConfigRecord, Message, RecordDict
from flwr.serverapp import Grid
from numpy.typing import NDArray

from fedlearn.config import SecureMode
from fedlearn.privacy.secure.base import (
    AggregationAbortedError,
    SecureSum,
    ServerProtocol,
    request,
)
from fedlearn.privacy.secure.ckks.parameters import (
    CkksParameters,
    parameters_and_min_contributors,
)
from fedlearn.privacy.secure.ckks.primitives import CkksRing, load_public_context
from fedlearn.privacy.secure.envelope import PUBLIC_KEY_BYTES
from fedlearn.privacy.secure.stages import (
    check_node_ids,
    exchange,
    read_answers,
    read_blob,
    read_fields,
    read_protected_reply,
    read_str,
)
from fedlearn.wire import SECURE_RECORD, CkksStage

__all__ = ["CkksServer"]


@dataclass
class _KeyState:
    """The server's view of the current CKKS key (no secret in it)."""

    ceremony_id: str
    fingerprint: str
    public_context: Any
    holders: list[int] = field(default_factory=list)


class CkksServer(ServerProtocol):
    """The aggregator's side of CKKS mode: runs the key ceremony, adds ciphertexts.

    Parameters
    ----------
    parameters : CkksParameters, optional
        Must equal the clients' parameters (default ``CkksParameters()``).
    min_contributors : int, default 2
        Fewest valid replies a round needs; with fewer the round is aborted
        before anything is decrypted.

    Examples
    --------
    >>> server = CkksServer(min_contributors=3)
    >>> records = server.setup(grid, server_round=1, node_ids=nodes, timeout=30)  # doctest: +SKIP
    >>> total = server.aggregate(grid, server_round=1, replies=replies, length=n, timeout=30)
    ... # doctest: +SKIP
    """

    mode: ClassVar[SecureMode] = "ckks"

    def __init__(
        self, *, parameters: CkksParameters | None = None, min_contributors: int = 2
    ) -> None:
        self._params, self._min_contributors = parameters_and_min_contributors(
            parameters, min_contributors
        )
        self._ring = CkksRing(self._params)
        self._key: _KeyState | None = None
        self._loaded: dict[int, tuple[Message, list[Any]]] = {}

    @property
    def parameters(self) -> CkksParameters:
        """The CKKS parameters."""
        return self._params

    @property
    def public_context(self) -> Any:
        """The TenSEAL context the server holds (no secret key), or None before the ceremony."""
        return None if self._key is None else self._key.public_context

    @property
    def key_holders(self) -> tuple[int, ...]:
        """Nodes known to hold the current key."""
        return () if self._key is None else tuple(self._key.holders)

    @property
    def fingerprint(self) -> str | None:
        """Fingerprint of the current key (see :func:`key_fingerprint`)."""
        return None if self._key is None else self._key.fingerprint

    # -- setup -----------------------------------------------------------------------

    def setup(
        self, grid: Grid, *, server_round: int, node_ids: Sequence[int], timeout: float
    ) -> dict[int, RecordDict]:
        """Give the key to sampled nodes that lack it; train records for nodes that hold it.

        Runs the key ceremony on first use (and again if no key holder is left to
        reshare to newcomers). Nodes failing a stage are left out of the round.
        """
        nodes = check_node_ids(node_ids)
        self._loaded.clear()  # ciphertexts checked in an earlier round
        if not math.isfinite(timeout) or timeout <= 0:
            raise ValueError(f"timeout must be > 0 seconds, got {timeout!r}")
        if len(nodes) > self._params.max_clients:
            raise ValueError(
                f"{len(nodes)} nodes sampled but a CKKS sum of more than "
                f"{self._params.max_clients} vectors with entries up to "
                f"{self._params.max_abs_value} can overflow: sample fewer nodes or lower "
                "CkksParameters.scale_bits / max_abs_value"
            )
        kw: dict[str, Any] = {"server_round": server_round, "timeout": timeout}
        if self._key is None:
            self._ceremony(grid, nodes, **kw)
        else:
            newcomers = [n for n in nodes if n not in self._key.holders]
            if newcomers and not self._reshare(grid, newcomers, **kw):
                # No holder answered: retire the key, make a fresh one among the sampled nodes.
                self._key = None
                self._ceremony(grid, nodes, **kw)
        if self._key is None:
            return {}
        train = ConfigRecord(
            {
                "stage": CkksStage.TRAIN,
                "ceremony-id": self._key.ceremony_id,
                "fingerprint": self._key.fingerprint,
            }
        )
        return {
            n: RecordDict({SECURE_RECORD: ConfigRecord(dict(train))})
            for n in nodes
            if n in self._key.holders
        }

    def _register(
        self, grid: Grid, nodes: list[int], ceremony_id: str, **kw: Any
    ) -> dict[int, bytes]:
        replies = exchange(
            grid,
            {n: request(CkksStage.REGISTER, **{"ceremony-id": ceremony_id}) for n in nodes},
            **kw,
        )
        keys: dict[int, bytes] = {}
        for node, (_, blobs) in read_answers(replies, CkksStage.REGISTER).items():
            with contextlib.suppress(ValueError):
                key = read_blob(blobs, "public-key")
                if len(key) == PUBLIC_KEY_BYTES:
                    keys[node] = key
        return keys

    def _sharing_request(
        self, stage: str, ceremony_id: str, keys: dict[int, bytes], holder: int
    ) -> RecordDict:
        recipients = sorted(n for n in keys if n != holder)
        blobs = {f"pk-{n}": keys[n] for n in recipients}
        return request(stage, **{"ceremony-id": ceremony_id, "recipients": recipients}, **blobs)

    def _envelopes(self, reply: Message, stage: str, recipients: list[int]) -> dict[int, bytes]:
        _, blobs = read_fields(reply, stage)
        return {n: read_blob(blobs, f"env-{n}") for n in recipients}

    def _ceremony(self, grid: Grid, nodes: list[int], **kw: Any) -> None:
        ceremony_id = secrets.token_hex(16)
        keys = self._register(grid, nodes, ceremony_id, **kw)
        for dealer in sorted(keys):
            content = self._sharing_request(CkksStage.DEAL, ceremony_id, keys, dealer)
            reply = exchange(grid, {dealer: content}, **kw).get(dealer)
            if reply is None:
                continue
            recipients = sorted(n for n in keys if n != dealer)
            try:
                config, blobs = read_fields(reply, CkksStage.DEAL)
                fingerprint = read_str(config, "fingerprint")
                public = load_public_context(read_blob(blobs, "public-context"), self._params)
                envelopes = self._envelopes(reply, CkksStage.DEAL, recipients)
            except ValueError:
                continue
            self._key = _KeyState(ceremony_id, fingerprint, public, [dealer])
            self._distribute(grid, envelopes, **kw)
            return

    def _reshare(self, grid: Grid, newcomers: list[int], **kw: Any) -> bool:
        assert self._key is not None
        keys = self._register(grid, newcomers, self._key.ceremony_id, **kw)
        if not keys:
            return True  # nobody to give the key to; the current holders still train
        for holder in list(self._key.holders):
            content = self._sharing_request(CkksStage.RESHARE, self._key.ceremony_id, keys, holder)
            reply = exchange(grid, {holder: content}, **kw).get(holder)
            if reply is None:
                continue
            try:
                config, _ = read_fields(reply, CkksStage.RESHARE)
                if read_str(config, "fingerprint") != self._key.fingerprint:
                    raise ValueError("holder reports another key")
                envelopes = self._envelopes(reply, CkksStage.RESHARE, sorted(keys))
            except ValueError:
                continue
            self._distribute(grid, envelopes, **kw)
            return True
        return False

    def _distribute(self, grid: Grid, envelopes: dict[int, bytes], **kw: Any) -> None:
        assert self._key is not None
        key = self._key
        contents = {
            node: request(
                CkksStage.KEY,
                **{"ceremony-id": key.ceremony_id, "fingerprint": key.fingerprint},
                envelope=envelope,
            )
            for node, envelope in envelopes.items()
        }
        answers = read_answers(exchange(grid, contents, **kw), CkksStage.KEY)
        for node, (config, _) in answers.items():
            with contextlib.suppress(ValueError):
                if read_str(config, "fingerprint") == key.fingerprint and node not in key.holders:
                    key.holders.append(node)

    # -- replies and aggregation -------------------------------------------------------

    def check_reply(self, msg: Message, *, length: int) -> str | None:
        """Why a protected train reply is unusable (``None`` if it is well formed).

        Checks the chunk count for ``length``, the key fingerprint, and that each
        chunk deserializes under the server's parameters as a fresh two-part
        ciphertext at the expected scale (catches garbage, truncation, other
        parameters and other keys' tags). CKKS ciphertexts are malleable: a
        changed byte inside a well-formed ciphertext can pass (about half of
        single-byte flips do) and changes the sum; integrity of what a client
        sent comes from the transport (TLS) and its signed update commitment.
        """
        try:
            # Kept for aggregate(): loading 100k parameters' ciphertexts twice cost ~20%.
            self._loaded[id(msg)] = (msg, self._ciphertexts(msg, length=length))
        except ValueError as exc:
            return str(exc)
        return None

    def _ciphertexts(self, msg: Message, *, length: int) -> list[Any]:
        count = self._params.ciphertext_count(length)
        if self._key is None:
            raise ValueError("no CKKS key has been set up")
        blobs = read_protected_reply(msg)
        expected = {f"ct-{i}" for i in range(count)} | {"key"}
        if set(blobs) != expected:
            found = sorted(k for k in blobs if k != "key")
            raise ValueError(
                f"expected {count} ciphertext chunks ct-0..ct-{count - 1} and 'key' for "
                f"length {length}, got {found}"
            )
        if read_blob(blobs, "key").hex() != self._key.fingerprint:
            raise ValueError("encrypted under another key (fingerprint differs)")
        out = []
        for i in range(count):
            try:
                out.append(self._ring.load(read_blob(blobs, f"ct-{i}")))
            except ValueError as exc:
                raise ValueError(f"ct-{i}: {exc}") from exc
        return out

    def aggregate(
        self,
        grid: Grid,
        *,
        server_round: int,
        replies: Sequence[Message],
        length: int,
        timeout: float,
    ) -> SecureSum:
        """Add the valid replies' ciphertexts and have one contributor decrypt the sum.

        Contributors are asked in node-id order; one that refuses or does not
        answer is skipped. :class:`AggregationAbortedError` if fewer than
        ``min_contributors`` replies are valid or nobody decrypts.
        """
        self._params.ciphertext_count(length)
        total: list[Any] | None = None
        contributors: list[int] = []
        dropped: dict[int, str] = {}
        for msg in replies:
            node = msg.metadata.src_node_id
            if node in contributors:
                dropped[node] = "more than one reply from this node"
                continue
            try:
                loaded = self._loaded.pop(id(msg), None)
                cts = (
                    loaded[1]
                    if loaded is not None and loaded[0] is msg
                    else self._ciphertexts(msg, length=length)
                )
            except ValueError as exc:
                dropped[node] = str(exc)
                continue
            if total is None:
                total = cts
            else:
                for acc, ct in zip(total, cts, strict=True):
                    self._ring.evaluator.add_inplace(acc, ct)
            contributors.append(node)
        contributors.sort()
        if total is None or len(contributors) < self._min_contributors:
            raise AggregationAbortedError(
                f"{len(contributors)} valid CKKS replies, at least {self._min_contributors} "
                f"needed (dropped: {dropped})"
            )
        assert self._key is not None
        sums = {f"sum-{i}": self._ring.dump(ct) for i, ct in enumerate(total)}
        content = request(
            CkksStage.DECRYPT,
            **{
                "ceremony-id": self._key.ceremony_id,
                "fingerprint": self._key.fingerprint,
                "contributors": contributors,
                "length": length,
            },
            **sums,
        )
        refusals: dict[int, str] = {}
        for node in contributors:
            reply = exchange(
                grid,
                {node: RecordDict(dict(content))},
                server_round=server_round,
                timeout=timeout,
            ).get(node)
            if reply is None:
                refusals[node] = "no reply"
                continue
            try:
                vector = _decrypted(reply, length)
            except ValueError as exc:
                refusals[node] = str(exc)
                continue
            return SecureSum(vector=vector, contributors=tuple(contributors), dropped=dropped)
        raise AggregationAbortedError(f"no contributor decrypted the CKKS sum: {refusals}")


def _decrypted(reply: Message, length: int) -> NDArray[np.float64]:
    _, blobs = read_fields(reply, CkksStage.DECRYPT)
    if "sum" not in blobs:
        raise ValueError("decryption reply has no 'sum'")
    array = blobs["sum"]
    if not isinstance(array, Array) or array.dtype != "float64" or list(array.shape) != [length]:
        raise ValueError(f"decryption reply 'sum' is not a float64 vector of length {length}")
    vector = np.asarray(array.numpy(), dtype=np.float64)
    if not np.all(np.isfinite(vector)):
        raise ValueError("decryption reply 'sum' has non-finite entries")
    return vector[:length].copy()
