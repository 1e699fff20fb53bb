"""Shared code of the secure-aggregation benchmarks (``bench_secure.py``).

Two measuring instruments:

* :class:`LoopbackAggregation` runs one mode's real server and client
  protocol objects (:mod:`fedlearn.privacy.secure`) against each other through
  :class:`fedlearn.loopback.LoopbackGrid`, in this process: ``setup`` (the
  stage exchanges: key ceremony, SecAgg+ key sharing, CrypTen party keys) →
  train messages (every client's ``protect``) → ``check_reply`` →
  ``aggregate`` (unmasking, decryption, party reveal). It times each part and
  counts every message's payload bytes per stage and direction. This is the
  protocol's own cost: no training, no serialization, no transport, clients
  one after the other (CrypTen's parties are real processes).
* :func:`client_vectors` makes the vectors clients protect in a real round:
  ``[w·(θ_k − θ), w]`` from local training of the benchmark's model on each
  client's partition (fedlearn's own :func:`fedlearn.training.train`).

The plaintext baseline goes through the same grid: each client replies its
update as a float32 ``ArrayRecord`` (what plaintext fedlearn sends), the
server reads and sums them.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from numpy.typing import NDArray

from fedlearn.client_app import client_seed, default_model
from fedlearn.config import RunConfig
from fedlearn.data import partition_bundled, split_validation
from fedlearn.loopback import LoopbackGrid, serverapp_identity
from fedlearn.privacy.secure.base import ServerProtocol, stage_of
from fedlearn.privacy.secure.client_mod import handle_secure_query
from fedlearn.privacy.secure.modes import client_protocol, server_protocol
from fedlearn.privacy.secure.packing import client_vector, example_weight, mean_update
from fedlearn.training import train
from fedlearn.wire import EXAMPLES_KEY, SECURE_BLOBS, SECURE_QUERY_TYPE

__all__ = [
    "SECURE_MODES",
    "AggregationResult",
    "LoopbackAggregation",
    "client_vectors",
    "mean_update_error",
    "payload_bytes",
    "random_vectors",
    "secagg_shares_for",
    "serverapp_identity",
]

#: The protected modes, in the order the docs list them.
SECURE_MODES: tuple[str, ...] = ("ckks", "secagg+", "crypten")
#: Seconds each protocol stage may wait (in process nothing waits; a bound, not a pause).
_TIMEOUT = 600.0


def payload_bytes(msg: Message) -> int:
    """Bytes of a message's records (arrays and config fields; 0 for an error reply).

    Parameters
    ----------
    msg : Message
        Any Flower message.

    Returns
    -------
    int
        Sum of ``count_bytes()`` over its ArrayRecords and ConfigRecords.
    """
    if msg.has_error():
        return 0
    content = msg.content
    return sum(r.count_bytes() for r in content.array_records.values()) + sum(
        _config_bytes(r) for r in content.config_records.values()
    )


def _value_bytes(value: object) -> int:
    if isinstance(value, str):
        return len(value.encode("utf-8"))
    if isinstance(value, bytes):
        return len(value)
    if isinstance(value, bool):
        return 1
    if isinstance(value, list):
        return sum(_value_bytes(v) for v in value)
    return 8  # int, float


def _config_bytes(record: ConfigRecord) -> int:
    """Keys plus values (``ConfigRecord.count_bytes`` of Flower 1.41 fails on empty lists)."""
    return sum(len(key.encode("utf-8")) + _value_bytes(v) for key, v in record.items())


def secagg_shares_for(clients: int) -> int:
    """SecAgg+ neighbourhood size used at scale: ``k = O(log n)`` as in Bell et al. 2020.

    ``k = min(largest odd <= n, 2·ceil(log2 n) + 1)``: every client of a
    10-client round (k = 9, as fedlearn's default ``secagg-num-shares = 0``),
    11 of 30, 15 of 100. fedlearn's default (every sampled client) would make
    the clients' masking cost grow with ``n`` instead of ``log n``.

    Parameters
    ----------
    clients : int
        Clients in the round (>= 3).

    Returns
    -------
    int
        The odd neighbourhood size.
    """
    largest_odd = clients if clients % 2 else clients - 1
    return min(largest_odd, 2 * math.ceil(math.log2(clients)) + 1)


@dataclass
class AggregationResult:
    """One secure (or plaintext) aggregation measured in process.

    Attributes
    ----------
    mode : str
        ``"none"`` (plaintext baseline), ``"ckks"``, ``"secagg+"`` or ``"crypten"``.
    clients, length : int
        Clients and vector length (parameters + the weight slot).
    seconds : float
        Whole aggregation: setup + protect (all clients) + check + aggregate.
    parts : dict[str, float]
        ``setup``, ``protect`` (all clients), ``check`` and ``aggregate`` seconds.
    stage_bytes : dict[str, dict[str, int]]
        Per stage (``train`` = the train message and its protected reply),
        ``down`` (server to clients, all clients) and ``up`` (clients to server).
    upload_bytes : float
        Mean bytes of one client's protected update (the train reply's records).
    total : NDArray[np.float64]
        The revealed sum.
    contributors : tuple[int, ...]
        Node ids in the sum.
    """

    mode: str
    clients: int
    length: int
    seconds: float
    parts: dict[str, float]
    stage_bytes: dict[str, dict[str, int]]
    upload_bytes: float
    total: NDArray[np.float64] = field(repr=False)
    contributors: tuple[int, ...] = ()

    @property
    def parameters(self) -> int:
        """Model parameters (the vector without its weight slot)."""
        return self.length - 1

    def upload_bytes_per_parameter(self) -> float:
        """One client's protected update, in bytes per model parameter."""
        return self.upload_bytes / self.parameters

    def stage_bytes_per_parameter(self) -> float:
        """Bytes of every stage exchange but the update itself, per client and parameter.

        Counts both directions of every ``query.secure`` stage plus what the
        protocol adds to the train message; excludes the protected update.
        """
        extra = 0
        for stage, sizes in self.stage_bytes.items():
            extra += sizes["down"] + (0 if stage == "train" else sizes["up"])
        return extra / self.clients / self.parameters

    def summary(self) -> dict[str, Any]:
        """A JSON-able digest (no vectors)."""
        return {
            "mode": self.mode,
            "clients": self.clients,
            "parameters": self.parameters,
            "seconds": self.seconds,
            "parts": dict(self.parts),
            "stage_bytes": {k: dict(v) for k, v in self.stage_bytes.items()},
            "upload_bytes_per_parameter": self.upload_bytes_per_parameter(),
            "stage_bytes_per_client_per_parameter": self.stage_bytes_per_parameter(),
            "contributors": len(self.contributors),
        }


class LoopbackAggregation:
    """A mode's server and clients wired through an in-process :class:`LoopbackGrid`.

    Parameters
    ----------
    cfg : RunConfig
        Selects the mode and its parameters (``cfg.secure``), built with
        :func:`fedlearn.privacy.secure.modes.server_protocol` as in a run.
        ``"none"`` measures the plaintext baseline.
    node_ids : sequence of int
        The clients' node ids.
    server : ServerProtocol, optional
        Use this server side instead (e.g. a CrypTen server on a shared
        :class:`~fedlearn.privacy.secure.crypten_mode.PartyPool`).

    Notes
    -----
    The server object and the clients' contexts persist across :meth:`run`
    calls, as in a run: CKKS holds its key ceremony in the first round only.
    Call :meth:`close` (or use ``with``) to stop what the server started.
    """

    def __init__(
        self,
        cfg: RunConfig,
        node_ids: Sequence[int],
        *,
        server: ServerProtocol | None = None,
    ) -> None:
        self.mode = cfg.secure.mode
        self.node_ids = sorted(node_ids)
        self.server: ServerProtocol | None = None
        if self.mode != "none":
            self.server = server if server is not None else server_protocol(cfg)
        self._vectors: Mapping[int, NDArray[np.float64]] = {}
        self._protect_seconds = 0.0
        self._replies: list[tuple[str, int]] = []
        self.grid = LoopbackGrid({n: self._handle for n in self.node_ids})

    def __enter__(self) -> LoopbackAggregation:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Release what the server side holds (CrypTen parties it started)."""
        if self.server is not None:
            self.server.close()

    # -- the clients' side -------------------------------------------------------------

    def _handle(self, msg: Message, context: Context) -> Message:
        node = int(context.node_id)
        if msg.metadata.message_type == SECURE_QUERY_TYPE:
            reply = handle_secure_query(msg, context)  # the ClientApp's real query handler
            self._replies.append((stage_of(msg), payload_bytes(reply)))
            return reply
        started = time.perf_counter()
        if self.mode == "none":
            protected = ArrayRecord({"update": Array(self._vectors[node].astype(np.float32))})
            content = RecordDict({"arrays": protected})
        else:
            record = client_protocol(self.mode).protect(self._vectors[node], msg, context)
            content = RecordDict({SECURE_BLOBS: record})
        content["metrics"] = MetricRecord({EXAMPLES_KEY: 1})
        reply = Message(content, reply_to=msg)
        self._protect_seconds += time.perf_counter() - started
        self._replies.append(("train", payload_bytes(reply)))
        return reply

    # -- one round ---------------------------------------------------------------------

    def setup_only(self, *, server_round: int) -> float:
        """Run only the server's set-up stages (e.g. CKKS's key ceremony); return seconds.

        Parameters
        ----------
        server_round : int
            The round number the set-up is for.

        Returns
        -------
        float
            Seconds taken (0 for the plaintext baseline).
        """
        if self.server is None:
            return 0.0
        with serverapp_identity():
            started = time.perf_counter()
            self.server.setup(
                self.grid, server_round=server_round, node_ids=self.node_ids, timeout=_TIMEOUT
            )
            return time.perf_counter() - started

    def run(
        self, vectors: Mapping[int, NDArray[np.float64]], *, server_round: int
    ) -> AggregationResult:
        """Aggregate ``vectors`` (one per node) in one protocol round, timing each part.

        Parameters
        ----------
        vectors : mapping of int to ndarray
            Each node's ``[w·u, w]`` vector (all the same length).
        server_round : int
            The round number (>= 1; use increasing numbers on one object).

        Returns
        -------
        AggregationResult
            Timings, bytes per stage and the revealed sum.

        Raises
        ------
        fedlearn.privacy.secure.base.AggregationAbortedError
            If the protocol aborts (it should not: nobody drops here).
        """
        if sorted(vectors) != self.node_ids:
            raise ValueError("one vector per node is needed")
        length = len(next(iter(vectors.values())))
        self._vectors = vectors
        self._protect_seconds = 0.0
        self._replies = []
        self.grid.sent.clear()
        parts: dict[str, float] = {}
        with serverapp_identity():
            started = time.perf_counter()
            if self.server is None:
                records: dict[int, RecordDict] = {n: RecordDict() for n in self.node_ids}
            else:
                records = self.server.setup(
                    self.grid, server_round=server_round, node_ids=self.node_ids, timeout=_TIMEOUT
                )
            parts["setup"] = time.perf_counter() - started
            messages = []
            for node in self.node_ids:
                content = RecordDict({"config": ConfigRecord({"server-round": server_round})})
                for name, record in records.get(node, RecordDict()).items():
                    content[name] = record
                messages.append(Message(content, node, "train", group_id=str(server_round)))
            mark = time.perf_counter()
            replies = list(self.grid.send_and_receive(messages, timeout=_TIMEOUT))
            parts["protect"] = self._protect_seconds
            parts["train messages (other)"] = time.perf_counter() - mark - self._protect_seconds
            mark = time.perf_counter()
            if self.server is None:
                problems = [None for _ in replies]
            else:
                problems = [self.server.check_reply(m, length=length) for m in replies]
            parts["check"] = time.perf_counter() - mark
            bad = [p for p in problems if p is not None]
            if bad:
                raise RuntimeError(f"{self.mode}: {len(bad)} replies refused: {bad[0]}")
            mark = time.perf_counter()
            if self.server is None:
                total = np.sum(
                    [m.content.array_records["arrays"]["update"].numpy() for m in replies],
                    axis=0,
                    dtype=np.float64,
                )
                contributors = tuple(sorted(m.metadata.src_node_id for m in replies))
            else:
                revealed = self.server.aggregate(
                    self.grid,
                    server_round=server_round,
                    replies=replies,
                    length=length,
                    timeout=_TIMEOUT,
                )
                total, contributors = revealed.vector, revealed.contributors
            parts["aggregate"] = time.perf_counter() - mark
            seconds = time.perf_counter() - started
        stage_bytes: dict[str, dict[str, int]] = {}
        for msg in self.grid.sent:
            stage = "train" if msg.metadata.message_type == "train" else stage_of(msg)
            sizes = stage_bytes.setdefault(stage, {"down": 0, "up": 0})
            if stage == "train":  # the protocol's fields only; the model is not sent here
                sizes["down"] += payload_bytes(msg) - _config_bytes(
                    msg.content.config_records["config"]
                )
            else:
                sizes["down"] += payload_bytes(msg)
        for stage, size in self._replies:
            stage_bytes.setdefault(stage, {"down": 0, "up": 0})["up"] += size
        uploads = [size for stage, size in self._replies if stage == "train"]
        return AggregationResult(
            mode=self.mode,
            clients=len(self.node_ids),
            length=length,
            seconds=seconds,
            parts=parts,
            stage_bytes=stage_bytes,
            upload_bytes=float(np.mean(uploads)),
            total=np.asarray(total, dtype=np.float64),
            contributors=tuple(contributors),
        )


def mean_update_error(
    result: AggregationResult, vectors: Mapping[int, NDArray[np.float64]]
) -> float:
    """Max |revealed mean update − plaintext mean update| over the contributors' vectors.

    Parameters
    ----------
    result : AggregationResult
        A secure aggregation of ``vectors``.
    vectors : mapping of int to ndarray
        The vectors that were protected.

    Returns
    -------
    float
        The largest absolute per-parameter difference of the weighted mean updates.
    """
    like = {"flat": np.zeros(result.parameters)}
    plain = np.sum([vectors[n] for n in result.contributors], axis=0)
    secure_mean = mean_update(result.total, like=like)["flat"]
    plain_mean = mean_update(plain, like=like)["flat"]
    return float(np.max(np.abs(secure_mean - plain_mean)))


def client_vectors(cfg: RunConfig, node_ids: Sequence[int]) -> dict[int, NDArray[np.float64]]:
    """The vectors ``[w·(θ_k − θ), w]`` clients protect in round 1 of ``cfg``'s run.

    Each client trains the run's initial model (seeded as the server seeds it)
    on its partition of the bundled dataset with the run's local training,
    exactly as fedlearn's ClientApp does, and weights its update by its capped
    example count.

    Parameters
    ----------
    cfg : RunConfig
        A run on a bundled dataset.
    node_ids : sequence of int
        One node id per partition, in partition order.

    Returns
    -------
    dict[int, ndarray]
        Each node's vector.
    """
    fed = cfg.federation
    partitions, _, _ = partition_bundled(cfg.data, clients=fed.clients, seed=fed.seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(fed.seed)
        initial = default_model(cfg).state_dict()
    sent = {k: v.detach().numpy().copy() for k, v in initial.items()}
    out = {}
    for index, node in enumerate(node_ids):
        data, _ = split_validation(
            partitions[index], fraction=cfg.data.validation_fraction, seed=fed.seed
        )
        model = default_model(cfg)
        model.load_state_dict(initial)
        train(model, data, cfg.train, seed=client_seed(fed.seed, 1, index))
        trained = {k: v.detach().numpy() for k, v in model.state_dict().items()}
        weight = example_weight(len(data), max_examples=cfg.secure.max_examples)
        out[node] = client_vector(trained=trained, sent=sent, weight=weight)
    return out


def random_vectors(
    node_ids: Sequence[int], parameters: int, *, seed: int
) -> dict[int, NDArray[np.float64]]:
    """Synthetic ``[w·u, w]`` vectors shaped like model updates (for the scaling sweep).

    ``u ~ N(0, 0.01²)`` per parameter (clipped to ±0.5, inside every mode's
    accepted range), ``w ~ U(0.2, 1)``. Protocol cost does not depend on the values.

    Parameters
    ----------
    node_ids : sequence of int
        The clients.
    parameters : int
        Model parameters (the vector has one more entry, the weight).
    seed : int
        Seed of NumPy's generator (benchmark data, not key material).

    Returns
    -------
    dict[int, ndarray]
        Each node's vector.
    """
    rng = np.random.default_rng(seed)
    out = {}
    for node in node_ids:
        weight = float(rng.uniform(0.2, 1.0))
        update = np.clip(rng.normal(0.0, 0.01, parameters), -0.5, 0.5)
        out[node] = np.concatenate([weight * update, [weight]])
    return out
