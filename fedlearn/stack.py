"""The server's strategy stack: the map of one round, outermost layer first.

Every round, Flower's loop (``Strategy.start``) calls the stack's hooks; each
layer is a strategy wrapper with one job, and the order reads like the threat
model: nothing reaches a layer that the layers above it refused::

    RoundRecorder            times the round, counts bytes, collects every layer's record
     └ ValidatedReplies      sets malformed replies aside (and runs the checks the layers
        │                    below declare), applies the round rule (min-train-clients)
        └ RoundAttestation   [attestation] signed commitments, Merkle leaves, durable outbox
           └ SecureAggregation      [secure mode] the server only ever sees the sum
             or ContributionScoring [plaintext + attestation] scores each update
              └ CentralDP            [central DP] clipping and noise, the server's ledger
                 └ strategy          FedAvg, FedAdam, ... (Flower's, unchanged)

Layers talk through the small protocols of :mod:`fedlearn.strategies.layers`
(who contributed, how each scored, what to check, what to record), never
through each other's classes, so a researcher can put any Flower strategy at
the bottom or a layer of their own anywhere in between.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from fedlearn.attestation.round_attestation import RoundAttestation
from fedlearn.attestation.session import AttestationSession
from fedlearn.client_app import ModelFactory
from fedlearn.config import RunConfig
from fedlearn.data import Dataset
from fedlearn.history import RoundRecord
from fedlearn.privacy.central_dp import CentralDP
from fedlearn.privacy.secure.aggregation import SecureAggregation
from fedlearn.privacy.secure.base import ServerProtocol
from fedlearn.privacy.secure.modes import value_scale
from fedlearn.strategies import ContributionScoring, StrategyWrapper, ValidatedReplies
from fedlearn.strategies.layers import RecordsRound, layers
from fedlearn.strategies.registry import build_strategy
from fedlearn.wire import PRIVACY_KEY, TRAIN_LOSS_KEY

__all__ = ["RoundRecorder", "StrategyStack", "build_stack"]

log = logging.getLogger(__name__)


class RoundRecorder(StrategyWrapper):
    """The outermost layer: times and measures each round and builds its record.

    It also shifts round numbers after a resume (Flower counts from 1 again),
    so every layer below sees the run's own round numbers.

    Parameters
    ----------
    strategy : Strategy
        The stack below (``ValidatedReplies`` in fedlearn's own stack).
    offset : int, default 0
        Rounds completed before this process started (a resumed run).
    """

    def __init__(self, strategy: Strategy, *, offset: int = 0) -> None:
        self.strategy = strategy
        self.offset = offset
        self.started = 0.0
        self.bytes_sent = 0
        self.bytes_received = 0
        self.train_metrics: MetricRecord | None = None
        self.eval_metrics: MetricRecord | None = None
        self.privacy: dict[str, dict[str, float]] = {}

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Start the round's clock, then let the stack sample clients."""
        self.started = time.perf_counter()
        self.train_metrics = self.eval_metrics = None
        messages = list(
            self.strategy.configure_train(server_round + self.offset, arrays, config, grid)
        )
        self.bytes_sent = sum(_payload_bytes(m) for m in messages)
        self.bytes_received = 0
        return messages

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Count the replies' bytes and privacy reports, then let the stack aggregate."""
        replies = list(replies)
        self.bytes_received += sum(_payload_bytes(m) for m in replies)
        self.privacy = {}
        for msg in replies:
            if not msg.has_error() and PRIVACY_KEY in msg.content.config_records:
                # As reported by the client (the server cannot recompute a holder's ε
                # without its record count); keyed by node so no client overwrites another.
                report = msg.content.config_records[PRIVACY_KEY]
                client = f"{report.get('client', '?')!s}@node{msg.metadata.src_node_id}"
                self.privacy[client] = {
                    k: float(v)
                    for k, v in report.items()
                    if isinstance(v, int | float) and k != "client"
                }
        arrays, self.train_metrics = self.strategy.aggregate_train(
            server_round + self.offset, replies
        )
        return arrays, self.train_metrics

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Count the evaluation messages' bytes."""
        messages = list(
            self.strategy.configure_evaluate(server_round + self.offset, arrays, config, grid)
        )
        self.bytes_sent += sum(_payload_bytes(m) for m in messages)
        return messages

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        """Count the evaluation replies' bytes and keep the federated metrics."""
        replies = list(replies)
        self.bytes_received += sum(_payload_bytes(m) for m in replies)
        self.eval_metrics = self.strategy.aggregate_evaluate(server_round + self.offset, replies)
        return self.eval_metrics

    def round_record(self) -> dict[str, Any]:
        """Time, bytes, the clients' privacy reports and the federated metrics."""
        return {
            "federated_accuracy": _metric(self.eval_metrics, "accuracy"),
            "federated_loss": _metric(self.eval_metrics, "loss"),
            "train_loss": _metric(self.train_metrics, TRAIN_LOSS_KEY),
            "seconds": time.perf_counter() - self.started,
            "bytes_sent": self.bytes_sent,
            "bytes_received": self.bytes_received,
            "privacy": self.privacy,
        }

    def record(self, server_round: int) -> RoundRecord:
        """The round's record: what every layer of the stack reports (``RecordsRound``)."""
        fields: dict[str, Any] = {}
        for layer in layers(self):
            if isinstance(layer, RecordsRound):
                fields.update(layer.round_record())
        return RoundRecord(round=server_round, **fields)


def _payload_bytes(msg: Message) -> int:
    if msg.has_error():
        return 0
    return sum(record.count_bytes() for record in msg.content.array_records.values())


def _metric(record: MetricRecord | None, key: str) -> float | None:
    if record is None or key not in record:
        return None
    value = record[key]
    return float(value) if isinstance(value, int | float) else None


@dataclass(frozen=True)
class StrategyStack:
    """A built stack: its outermost layer (what Flower runs) and the user's strategy."""

    recorder: RoundRecorder
    inner: Strategy

    def describe(self) -> str:
        """The layers, outermost first (``RoundRecorder > ValidatedReplies > ... > FedAvg``)."""
        return " > ".join(type(layer).__name__ for layer in layers(self.recorder))


def build_stack(
    cfg: RunConfig,
    *,
    run_dir: Path,
    strategy: Strategy | None = None,
    model_fn: ModelFactory,
    test_set: Dataset | None = None,
    resume: bool = False,
    protocol: ServerProtocol | None = None,
    session: AttestationSession | None = None,
) -> StrategyStack:
    """Build the run's strategy stack from its config, innermost layer first.

    Parameters
    ----------
    cfg : RunConfig
        The validated run config: which layers the stack has and their settings.
    run_dir : Path
        The run directory (the server's central-DP ledger lives there).
    strategy : Strategy, optional
        The aggregation strategy at the bottom; default ``cfg.federation.strategy``.
    model_fn : ModelFactory
        Builds the model (contribution scoring evaluates coalitions with it).
    test_set : Dataset, optional
        The server's held-out data (contribution scoring needs it).
    resume : bool, default False
        Keep the central-DP ledger of an earlier process of this run.
    protocol : ServerProtocol, optional
        The secure-aggregation mode's server side (``None``: plaintext).
    session : AttestationSession, optional
        The open attestation session (``None``: no attestation).
    """
    fed = cfg.federation
    inner = strategy or build_strategy(
        fed.strategy,
        min_nodes=fed.clients,
        fraction_train=fed.fraction_train,
        # Under local DP, evaluation replies would release un-noised statistics.
        fraction_evaluate=0.0 if cfg.privacy.local_dp else fed.fraction_evaluate,
        min_train_clients=fed.min_train_clients,
    )
    stack: Strategy = inner
    if cfg.privacy.central_dp != "none":
        ledger_path = run_dir / "central_ledger.json"
        if not resume:
            ledger_path.unlink(missing_ok=True)  # a new run starts a new ledger
        stack = CentralDP(
            stack,
            mode=cfg.privacy.central_dp,
            noise_multiplier=cfg.privacy.central_noise_multiplier,
            clipping_norm=cfg.privacy.central_clipping_norm,
            min_replies=fed.min_train_clients,
            delta=cfg.privacy.delta,
            dishonest_clients=cfg.privacy.distributed_dishonest_clients,
            accountant=cfg.privacy.accountant,
            ledger_path=ledger_path,
            behind_secure_aggregation=protocol is not None,
        )
    if session is not None:
        stack = _scoring_layer(cfg, stack, model_fn=model_fn, test_set=test_set, secure=protocol)
    if protocol is not None:
        stack = SecureAggregation(
            stack,
            protocol=protocol,
            min_contributors=fed.min_train_clients,
            max_examples=cfg.secure.max_examples,
            # Under DP the weights are public constants (counts are not released).
            uniform_weights=cfg.privacy.local_dp or cfg.privacy.central_dp != "none",
            value_scale=value_scale(cfg),
            timeout=fed.timeout,
        )
    if session is not None:
        stack = RoundAttestation(
            stack,
            run_id=session.run_id,
            run_dir=run_dir,
            outbox=session.outbox,
            contracts=session.contracts,
            budget=session.budget,
            max_examples=cfg.secure.max_examples,
            flush_seconds=cfg.attestation.flush_seconds,
        )
    validated = ValidatedReplies(
        stack, min_replies=fed.min_train_clients, max_examples=cfg.secure.max_examples
    )
    return StrategyStack(recorder=RoundRecorder(validated), inner=inner)


def _scoring_layer(
    cfg: RunConfig,
    stack: Strategy,
    *,
    model_fn: ModelFactory,
    test_set: Dataset | None,
    secure: ServerProtocol | None,
) -> Strategy:
    """Contribution scoring on each update, where the run lets the server see updates.

    Scoring per update needs every update in the clear (no secure mode), no
    central DP (scores would be an unaccounted release) and server test data.
    Elsewhere the attestation layer falls back to what the secure mode can
    score or to attested example counts, and says so in the round record.
    """
    method = cfg.attestation.scoring
    if method == "examples":
        return stack
    if secure is not None or cfg.privacy.central_dp != "none" or test_set is None:
        if method != "auto":
            log.warning(
                "attestation.scoring = %r needs each update and server test data; this run "
                "scores %s instead",
                method,
                "inside the secure mode (or by examples)" if secure else "by attested examples",
            )
        return stack
    return ContributionScoring(
        stack,
        utility_data=test_set,
        model_fn=lambda: model_fn(cfg),
        max_examples=cfg.secure.max_examples,
        method="gtg-shapley" if method == "auto" else method,
        seed=cfg.federation.seed,
    )
