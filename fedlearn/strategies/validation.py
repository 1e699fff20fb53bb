"""A strategy wrapper that drops malformed updates and applies the round rule.

Flower's strategies raise on the first inconsistent reply, which aborts the
whole run. A federation of independent data holders needs the opposite: a bad
reply (wrong keys, wrong shapes, NaN, a missing or non-positive example count)
is set aside with a logged reason, and the round goes on with the others, as
long as at least ``min_replies`` valid updates remain. Otherwise the round is
skipped and the global model is left unchanged (Flower keeps the previous
arrays when ``aggregate_train`` returns ``None``).

The layers below may add checks of their own (a signed commitment, a protected
payload the plaintext checks cannot read): every layer that implements
:class:`~fedlearn.strategies.layers.ChecksReplies` is found when the wrapper
is built, and its check runs here, before anything below sees the reply.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from fedlearn.strategies.layers import ChecksReplies, layers
from fedlearn.strategies.wrapper import StrategyWrapper
from fedlearn.wire import EXAMPLES_KEY

__all__ = ["RoundReport", "ValidatedReplies"]

log = logging.getLogger(__name__)


@dataclass
class RoundReport:
    """What happened to the replies of one training round."""

    server_round: int = 0
    sampled: int = 0
    accepted: int = 0
    rejected: dict[int, str] = field(default_factory=dict)
    applied: bool = False

    def to_record(self) -> dict[str, Any]:
        """The round-record fields this report fills in."""
        return {
            "sampled": self.sampled,
            "accepted": self.accepted,
            "rejected": {str(node): reason for node, reason in self.rejected.items()},
            "applied": self.applied,
        }


class ValidatedReplies(StrategyWrapper):
    """Validate every training reply against the global model before aggregating.

    Parameters
    ----------
    strategy : Strategy
        The strategy that aggregates the valid replies (FedAvg, FedAdam, ...),
        possibly wrapped in layers whose reply checks run here (see the module
        docstring).
    min_replies : int
        The round's completion rule: the aggregate is applied only when at
        least this many valid updates arrived.
    weighted_by_key : str, default EXAMPLES_KEY
        Metric every reply must carry as a positive, finite number.
    max_examples : int, optional
        Cap applied to each valid reply's ``weighted_by_key`` before
        aggregation: a client claiming more examples than it has gains at most
        the cap's weight (and is attested and scored with the capped count).

    Examples
    --------
    >>> from flwr.serverapp.strategy import FedAvg
    >>> strategy = ValidatedReplies(FedAvg(), min_replies=2)
    """

    def __init__(
        self,
        strategy: Strategy,
        *,
        min_replies: int,
        weighted_by_key: str = EXAMPLES_KEY,
        max_examples: int | None = None,
    ) -> None:
        if min_replies < 1:
            raise ValueError(f"min_replies must be >= 1, got {min_replies}")
        self.strategy = strategy
        self.min_replies = min_replies
        self.weighted_by_key = weighted_by_key
        below = [layer for layer in layers(strategy) if isinstance(layer, ChecksReplies)]
        #: Checks of the layers below, outermost first; payload checks last.
        self.reply_checks = tuple(c for c in below if not c.checks_payload)
        self.payload_checks = tuple(c for c in below if c.checks_payload)
        if max_examples is not None and max_examples < 1:
            raise ValueError(f"max_examples must be >= 1, got {max_examples}")
        self.max_examples = max_examples
        self._expected: dict[str, tuple[tuple[int, ...], str]] = {}
        self.last_report = RoundReport()

    def summary(self) -> None:
        """Log the wrapped strategy's summary and the completion rule."""
        self.strategy.summary()
        log.debug("ValidatedReplies: a round needs >= %d valid updates", self.min_replies)

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Remember the global model's layout, then let the strategy sample clients."""
        self._expected = {k: (tuple(a.shape), a.dtype) for k, a in arrays.items()}
        messages = list(self.strategy.configure_train(server_round, arrays, config, grid))
        self.last_report = RoundReport(server_round=server_round, sampled=len(messages))
        return messages

    def round_record(self) -> dict[str, Any]:
        """Sampled, accepted and rejected replies, and whether the round was applied."""
        return self.last_report.to_record()

    def check_reply(self, msg: Message) -> str | None:
        """Return why a training reply is unusable, or ``None`` if it is valid."""
        if msg.has_error():
            return f"client error: {msg.error.reason}"
        for layer in self.reply_checks:
            if (reason := layer.check_reply(msg)) is not None:
                return reason
        content = msg.content
        if self.payload_checks:
            for layer in self.payload_checks:
                if (reason := layer.check_reply(msg)) is not None:
                    return reason
            return self._check_weight(msg)
        if len(content.array_records) != 1:
            return f"expected exactly one ArrayRecord, got {len(content.array_records)}"
        record = next(iter(content.array_records.values()))
        if set(record.keys()) != set(self._expected):
            return f"array keys {sorted(record.keys())} differ from the model's"
        for key, array in record.items():
            shape, dtype = self._expected[key]
            if tuple(array.shape) != shape or array.dtype != dtype:
                return (
                    f"array {key!r} is {array.dtype}{list(array.shape)}, "
                    f"expected {dtype}{list(shape)}"
                )
            if not np.isfinite(array.numpy()).all():
                return f"array {key!r} contains NaN or infinity"
        return self._check_weight(msg)

    def _check_weight(self, msg: Message) -> str | None:
        if len(msg.content.metric_records) != 1:
            return f"expected exactly one MetricRecord, got {len(msg.content.metric_records)}"
        metrics = next(iter(msg.content.metric_records.values()))
        weight = metrics.get(self.weighted_by_key)
        if not isinstance(weight, int | float) or not math.isfinite(weight) or weight <= 0:
            return f"metric {self.weighted_by_key!r} must be a positive number, got {weight!r}"
        return None

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Aggregate the valid replies if the round rule holds; else skip the round."""
        report = self.last_report
        valid: list[Message] = []
        for msg in replies:
            reason = self.check_reply(msg)
            if reason is None:
                valid.append(msg)
            else:
                report.rejected[msg.metadata.src_node_id] = reason
                log.warning(
                    "round %d: update from node %d rejected: %s",
                    server_round,
                    msg.metadata.src_node_id,
                    reason,
                )
        report.accepted = len(valid)
        if len(valid) < self.min_replies:
            log.warning(
                "round %d skipped: %d valid update(s), the rule needs %d; global model unchanged",
                server_round,
                len(valid),
                self.min_replies,
            )
            return None, None
        if self.max_examples is not None:
            for msg in valid:
                claimed = next(iter(msg.content.metric_records.values()))
                if cast(float, claimed[self.weighted_by_key]) > self.max_examples:
                    claimed[self.weighted_by_key] = self.max_examples
        # Aggregate in a fixed order so that floating-point sums are reproducible.
        valid.sort(key=lambda m: m.metadata.src_node_id)
        arrays, metrics = self.strategy.aggregate_train(server_round, valid)
        report.applied = arrays is not None
        return arrays, metrics

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        """Aggregate evaluation replies that carry a usable example count."""
        valid = [
            m
            for m in replies
            if not m.has_error()
            and len(m.content.metric_records) == 1
            and isinstance(
                next(iter(m.content.metric_records.values())).get(self.weighted_by_key), int | float
            )
        ]
        return self.strategy.aggregate_evaluate(server_round, valid) if valid else None
