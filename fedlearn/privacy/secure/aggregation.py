"""``SecureAggregation``: any linear strategy on top of a secure sum.

The wrapper runs a mode's stages around Flower's round: before the train
messages leave it lets the mode set up the sampled clients (key ceremony,
SecAgg+ key sharing, compute-party keys); when the protected replies are in,
it has the mode reveal their sum only, turns ``[Σ w·u, Σ w]`` into the
weighted mean update, and hands the wrapped strategy a single reply that
carries ``global + mean update`` with weight ``Σ w``. FedAvg returns that
model; FedAvgM, FedAdam, FedYogi, FedAdagrad and FedProx apply their server
optimiser to it exactly as to a plaintext average. Strategies that need every
update (median, trimmed mean, Krum, Bulyan) are refused.

Wrapped in :class:`~fedlearn.strategies.ValidatedReplies`, its
:meth:`SecureAggregation.check_reply` replaces the plaintext array checks
(it implements :class:`~fedlearn.strategies.layers.ChecksReplies` with
``checks_payload = True``), so malformed protected replies are set aside and
the round rule counts only well-formed ones. It tells the layers above whose
update is in the sum and, where the mode can compute them without revealing
an update, each contributor's score.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, ClassVar

from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import (
    Bulyan,
    FedMedian,
    FedTrimmedAvg,
    Krum,
    MultiKrum,
    Strategy,
)
from numpy.typing import NDArray

from fedlearn.privacy.secure.base import (
    AggregationAbortedError,
    ServerProtocol,
)
from fedlearn.privacy.secure.packing import mean_update, vector_length
from fedlearn.strategies.layers import RoundScores, layers
from fedlearn.strategies.wrapper import StrategyWrapper
from fedlearn.wire import (
    EXAMPLES_KEY,
    SECURE_BLOBS,
    SECURE_CONTRIBUTORS_KEY,
    SECURE_MAX_EXAMPLES_KEY,
    SECURE_MODE_KEY,
    SECURE_SCALE_KEY,
    SECURE_UNIFORM_KEY,
)

__all__ = [
    "SecureAggregation",
    "SecureRoundReport",
]

log = logging.getLogger(__name__)


_NEEDS_INDIVIDUAL_UPDATES = (FedMedian, FedTrimmedAvg, Krum, MultiKrum, Bulyan)


@dataclass
class SecureRoundReport:
    """What the secure layer did in one round (for the round record)."""

    mode: str = ""
    contributors: list[int] = field(default_factory=list)
    dropped: dict[int, str] = field(default_factory=dict)
    scores: dict[int, float] = field(default_factory=dict)
    aborted: str = ""
    setup_seconds: float = 0.0
    aggregate_seconds: float = 0.0

    def to_record(self) -> dict[str, Any]:
        """The round-record fields this report fills in."""
        return {
            "secure": {
                "mode": self.mode,
                "contributors": len(self.contributors),
                "dropped": {str(node): reason for node, reason in self.dropped.items()},
                "aborted": self.aborted,
                "setup-seconds": self.setup_seconds,
                "aggregate-seconds": self.aggregate_seconds,
            }
        }


class SecureAggregation(StrategyWrapper):
    """Aggregate with a secure-aggregation protocol; the server sees only the sum.

    Implements the stack protocols ``ChecksReplies`` (protected payloads),
    ``ReportsContributors``, ``ScoresContributions`` and ``RecordsRound``
    (see :mod:`fedlearn.strategies.layers`).

    Parameters
    ----------
    strategy : Strategy
        A linear strategy (FedAvg, FedAvgM, FedAdam, FedYogi, FedAdagrad, FedProx),
        or :class:`~fedlearn.privacy.central_dp.CentralDP` in ``client`` /
        ``distributed`` mode wrapping one.
    protocol : ServerProtocol
        The mode's server side (CKKS, SecAgg+ or CrypTen).
    min_contributors : int
        Fewest clients whose update may be revealed as a sum; a round with
        fewer is skipped (model unchanged).
    max_examples : int, default 1000
        Cap on a client's example count (its weight is ``min(n, cap) / cap``).
    uniform_weights : bool, default False
        Weight every client 1 (local DP, user-level DP).
    value_scale : float, default 1.0
        Clients divide their vector by this public factor before protecting
        it and the server multiplies the revealed sum back: it keeps noised
        updates (distributed DP) inside a mode's value range (CKKS ±1,
        SecAgg+ ±clipping range) at the price of that factor in precision.
    timeout : float, default 600
        Seconds each protocol stage waits for replies.

    Examples
    --------
    >>> from flwr.serverapp.strategy import FedAvg
    >>> from fedlearn.privacy.secure.secaggplus import SecAggPlusServer
    >>> protocol = SecAggPlusServer(num_shares=5, reconstruction_threshold=3)
    >>> strategy = SecureAggregation(FedAvg(), protocol=protocol, min_contributors=3)
    """

    def __init__(
        self,
        strategy: Strategy,
        *,
        protocol: ServerProtocol,
        min_contributors: int,
        max_examples: int = 1000,
        uniform_weights: bool = False,
        value_scale: float = 1.0,
        timeout: float = 600.0,
    ) -> None:
        *_, inner = layers(strategy)  # look through wrappers such as CentralDP
        if isinstance(inner, _NEEDS_INDIVIDUAL_UPDATES):
            raise ValueError(
                f"{type(inner).__name__} needs every individual update, which secure "
                f"aggregation ({protocol.mode}) never reveals; use a linear strategy "
                "such as FedAvg, FedAvgM, FedAdam or FedProx"
            )
        if min_contributors < 1:
            raise ValueError(f"min_contributors must be >= 1, got {min_contributors}")
        if max_examples < 1:
            raise ValueError(f"max_examples must be >= 1, got {max_examples}")
        if timeout <= 0:
            raise ValueError(f"timeout must be > 0, got {timeout}")
        if not value_scale >= 1:
            raise ValueError(f"value_scale must be >= 1, got {value_scale}")
        self.strategy = strategy
        self.protocol = protocol
        self.min_contributors = min_contributors
        self.max_examples = max_examples
        self.uniform_weights = uniform_weights
        self.value_scale = float(value_scale)
        self.timeout = timeout
        self.last_report = SecureRoundReport(mode=protocol.mode)
        self._grid: Grid | None = None
        self._global: dict[str, NDArray[Any]] = {}
        self._length = 0

    #: Its reply check validates the protected payload (see ``ChecksReplies``).
    checks_payload: ClassVar[bool] = True

    def round_contributors(self) -> list[int]:
        """Nodes whose vector is in this round's revealed sum."""
        return list(self.last_report.contributors)

    def round_scores(self) -> RoundScores | None:
        """Scores the mode computed without revealing an update (CrypTen), if any."""
        if not self.last_report.scores:
            return None
        return RoundScores(scores=dict(self.last_report.scores), method="alignment (secure)")

    def round_record(self) -> dict[str, Any]:
        """Mode, contributors, drops, abort reason and stage times of the round."""
        return self.last_report.to_record()

    def summary(self) -> None:
        """Log the wrapped strategy's summary and the mode."""
        self.strategy.summary()
        log.info(
            "SecureAggregation(%s): sums of >= %d clients only",
            self.protocol.mode,
            self.min_contributors,
        )

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Sample clients, run the mode's set-up stages, attach what each node needs."""
        self._grid = grid
        self._global = {k: a.numpy() for k, a in arrays.items()}
        self._length = vector_length(self._global)
        self.last_report = SecureRoundReport(mode=self.protocol.mode)
        config[SECURE_MODE_KEY] = self.protocol.mode
        config[SECURE_UNIFORM_KEY] = self.uniform_weights
        config[SECURE_SCALE_KEY] = self.value_scale
        config[SECURE_MAX_EXAMPLES_KEY] = self.max_examples
        messages = list(self.strategy.configure_train(server_round, arrays, config, grid))
        if not messages:
            return messages
        started = time.perf_counter()
        try:
            ready = self.protocol.setup(
                grid,
                server_round=server_round,
                node_ids=[m.metadata.dst_node_id for m in messages],
                timeout=self.timeout,
            )
        except (AggregationAbortedError, ValueError) as exc:
            self.last_report.aborted = str(exc)
            log.warning(
                "round %d: %s set-up aborted, no client trains: %s",
                server_round,
                self.protocol.mode,
                exc,
            )
            return []
        finally:
            self.last_report.setup_seconds = time.perf_counter() - started
        out = []
        for msg in messages:
            node = msg.metadata.dst_node_id
            if node not in ready:
                self.last_report.dropped[node] = "did not complete the set-up stages"
                continue
            # Strategies share one content object among a round's messages: copy it.
            msg.content = RecordDict({**msg.content, **ready[node]})
            out.append(msg)
        if len(out) < len(messages):
            log.warning(
                "round %d: %d of %d sampled clients dropped during %s set-up",
                server_round,
                len(messages) - len(out),
                len(messages),
                self.protocol.mode,
            )
        return out

    def check_reply(self, msg: Message) -> str | None:
        """Why a protected train reply is unusable (for ``ValidatedReplies``)."""
        if msg.has_error():
            return f"client error: {msg.error.reason}"
        if "arrays" in msg.content.array_records:
            return "plaintext model update in a secure round (refused unread)"
        if SECURE_BLOBS not in msg.content.array_records:
            return f"no protected update ({SECURE_BLOBS!r} record missing)"
        return self.protocol.check_reply(msg, length=self._length)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Reveal the sum of the protected updates and let the strategy apply it."""
        replies = list(replies)
        report = self.last_report
        if self._grid is None:
            raise RuntimeError("aggregate_train called before configure_train")
        started = time.perf_counter()
        try:
            total = self.protocol.aggregate(
                self._grid,
                server_round=server_round,
                replies=replies,
                length=self._length,
                timeout=self.timeout,
            )
            if len(total.contributors) < self.min_contributors:
                raise AggregationAbortedError(
                    f"only {len(total.contributors)} client(s) in the sum, "
                    f"the round needs {self.min_contributors}"
                )
            revealed = total.vector * self.value_scale
            self._check_weight(float(revealed[-1]), len(total.contributors))
            update = mean_update(revealed, like=self._global)
        except (AggregationAbortedError, ValueError) as exc:
            report.aborted = str(exc)
            log.warning(
                "round %d: %s aggregation aborted, global model unchanged: %s",
                server_round,
                self.protocol.mode,
                exc,
            )
            return None, None
        finally:
            report.aggregate_seconds = time.perf_counter() - started
        report.contributors = list(total.contributors)
        report.dropped.update(total.dropped)
        report.scores = dict(total.scores)
        model = ArrayRecord(
            {k: Array((g + update[k]).astype(g.dtype, copy=False)) for k, g in self._global.items()}
        )
        weight = float(total.vector[-1])
        aggregate = Message(  # type: ignore[call-overload]  # metadata-only form exists at run time
            content=RecordDict(
                {
                    "arrays": model,
                    "metrics": MetricRecord(
                        {EXAMPLES_KEY: weight, SECURE_CONTRIBUTORS_KEY: len(total.contributors)}
                    ),
                }
            ),
            metadata=replies[0].metadata,
        )
        arrays, metrics = self.strategy.aggregate_train(server_round, [aggregate])
        out = MetricRecord(dict(metrics) if metrics is not None else {})
        out[SECURE_CONTRIBUTORS_KEY] = len(total.contributors)
        return arrays, out

    def _check_weight(self, weight: float, contributors: int) -> None:
        """Refuse a sum whose weight slot no honest set of clients could produce.

        Each weight is 1 (uniform) or in (0, 1]; a client lying in its weight
        slot would otherwise rescale everybody's contribution through the
        division by the total weight.
        """
        slack = 1e-3 * contributors + 1e-6
        if self.uniform_weights and abs(weight - contributors) > slack:
            raise AggregationAbortedError(
                f"the weights sum to {weight:.6g}, not {contributors} (one per client): "
                "a client sent a wrong weight slot"
            )
        if not 0 < weight <= contributors + slack:
            raise AggregationAbortedError(
                f"the weights sum to {weight:.6g}, outside (0, {contributors}] for "
                f"{contributors} clients: a client sent a wrong weight slot"
            )
