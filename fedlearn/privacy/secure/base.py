"""What every secure-aggregation mode implements, server side and client side.

A mode protects one flat ``float64`` vector per client: the client's weighted
model update followed by its weight (see :mod:`fedlearn.privacy.secure.packing`).
The server only ever learns the sum of the vectors of the clients that
finished, which :class:`SecureAggregation` turns back into a model for the
wrapped (linear) strategy.

Wire conventions (shared by all modes):

* stage requests are Flower messages of type
  :data:`~fedlearn.wire.SECURE_QUERY_TYPE`; their ``ConfigRecord``
  :data:`~fedlearn.wire.SECURE_RECORD` holds ``stage`` (str) and mode-specific
  fields; binary blobs travel as ``uint8`` arrays in the ``ArrayRecord``
  :data:`~fedlearn.wire.SECURE_BLOBS` (:func:`request` builds both,
  :func:`blob_bytes` reads one); replies use the same two record names;
* the train message of a secure round also carries the records that
  :meth:`ServerProtocol.setup` produced for that node;
* a protected train reply carries the ``ArrayRecord`` ``SECURE_BLOBS`` (and the
  usual ``MetricRecord`` "metrics"), never a plaintext ``"arrays"`` record.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.serverapp import Grid
from numpy.typing import NDArray

from fedlearn.config import SecureMode
from fedlearn.wire import SECURE_BLOBS, SECURE_RECORD

__all__ = [
    "AggregationAbortedError",
    "ClientProtocol",
    "SecureSum",
    "ServerProtocol",
    "blob",
    "blob_bytes",
    "request",
    "stage_of",
]


class AggregationAbortedError(RuntimeError):
    """The secure sum cannot be completed this round (the reason says why)."""


@dataclass(frozen=True)
class SecureSum:
    """The revealed sum of the protected vectors of ``contributors``.

    Attributes
    ----------
    vector : NDArray[np.float64]
        Sum over contributors of their protected vectors (weight slot last).
    contributors : tuple[int, ...]
        Node ids whose vector is in the sum, sorted.
    dropped : dict[int, str]
        Nodes that replied but were left out during aggregation, with why.
    scores : dict[int, float]
        Per-contributor alignment scores, for modes that can compute them
        without revealing an update: ``<x_k, s> / <s, s>`` where ``x_k`` is
        contributor k's vector and ``s`` the revealed sum, both without the
        weight slot (they sum to 1). Empty when the mode cannot score.
    """

    vector: NDArray[np.float64]
    contributors: tuple[int, ...]
    dropped: dict[int, str] = field(default_factory=dict)
    scores: dict[int, float] = field(default_factory=dict)


class ServerProtocol(abc.ABC):
    """The aggregator's side of a mode. Holds no secret that opens an update."""

    mode: ClassVar[SecureMode]

    @abc.abstractmethod
    def setup(
        self, grid: Grid, *, server_round: int, node_ids: Sequence[int], timeout: float
    ) -> dict[int, RecordDict]:
        """Run the stages that precede training with the sampled nodes.

        Returns, for every node that may train this round, the records to add
        to its train message; nodes left out are dropped from the round.
        """

    @abc.abstractmethod
    def check_reply(self, msg: Message, *, length: int) -> str | None:
        """Why a protected train reply is unusable (``None`` if it is well formed)."""

    @abc.abstractmethod
    def aggregate(
        self,
        grid: Grid,
        *,
        server_round: int,
        replies: Sequence[Message],
        length: int,
        timeout: float,
    ) -> SecureSum:
        """Reveal the sum of the replies' vectors (raise :class:`AggregationAbortedError`)."""

    def close(self) -> None:  # noqa: B027  (optional hook)
        """Release processes or keys the protocol holds (default: nothing)."""


class ClientProtocol(abc.ABC):
    """A data holder's side of a mode; its secrets live in ``context.state``."""

    mode: ClassVar[SecureMode]

    @abc.abstractmethod
    def handle_query(self, msg: Message, context: Context) -> Message:
        """Answer a stage request (a :data:`~fedlearn.wire.SECURE_QUERY_TYPE` message)."""

    @abc.abstractmethod
    def protect(self, vector: NDArray[np.float64], msg: Message, context: Context) -> ArrayRecord:
        """Protect this client's vector: the ``SECURE_BLOBS`` record of the train reply."""


def blob(data: bytes) -> Array:
    """Wrap bytes as a ``uint8`` Array (how blobs travel in an ArrayRecord)."""
    return Array(np.frombuffer(data, dtype=np.uint8).copy())


def blob_bytes(array: Any) -> bytes:
    """Bytes of a ``uint8`` Array; ``ValueError`` for anything else."""
    if not isinstance(array, Array) or array.dtype != "uint8" or len(array.shape) != 1:
        raise ValueError("expected a 1-d uint8 array of bytes")
    return bytes(array.numpy().tobytes())


def stage_of(msg: Message) -> str:
    """The ``stage`` field of a stage request or secure train message."""
    config = msg.content.config_records.get(SECURE_RECORD)
    if config is None or not isinstance(config.get("stage"), str):
        raise ValueError(f"message has no {SECURE_RECORD!r} ConfigRecord with a 'stage'")
    return str(config["stage"])


def request(stage: str, **fields: Any) -> RecordDict:
    """Content of a stage request: ConfigRecord fields plus optional byte blobs.

    ``bytes`` values go to the ArrayRecord, everything else to the ConfigRecord.
    """
    config = ConfigRecord({"stage": stage})
    arrays = ArrayRecord()
    for key, value in fields.items():
        if isinstance(value, bytes):
            arrays[key] = blob(value)
        else:
            config[key] = value
    return RecordDict({SECURE_RECORD: config, SECURE_BLOBS: arrays})
