"""A strategy wrapper that scores every participant's contribution to a round.

Plaintext mode only: scoring needs each client's update in the clear (the
server computes ``local − global`` per reply). In a secure aggregation mode
the server never holds an individual update, so this wrapper cannot be used
there (DESIGN.md §6).

The score of a client is its contribution to the validation utility of the
round's aggregate, on a validation set the **server** holds: leave-one-out,
GTG-Shapley (Monte-Carlo) or exact Shapley values over the coalitions of the
round's valid participants (see :mod:`fedlearn.strategies.shapley`). A
coalition's model is the global model plus the example-weighted average of
its members' updates, i.e. what FedAvg would produce from those clients
alone; for other aggregators (FedAdam, FedMedian, ...) that is an
approximation of their aggregate, stated here rather than hidden.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable
from typing import Any, Literal

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy
from numpy.typing import NDArray
from torch import nn

from fedlearn.data import Dataset
from fedlearn.strategies.layers import RoundScores
from fedlearn.strategies.shapley import (
    ContributionScores,
    check_gtg_options,
    exact_shapley,
    gtg_shapley,
    leave_one_out,
    update_utility,
)
from fedlearn.strategies.wrapper import StrategyWrapper
from fedlearn.training import evaluate
from fedlearn.wire import EXAMPLES_KEY

__all__ = ["METHODS", "UTILITIES", "ContributionScoring"]

log = logging.getLogger(__name__)

_MAX_EXACT_CLIENTS = 12

METHODS = ("gtg-shapley", "leave-one-out", "exact-shapley")
"""Scoring methods :class:`ContributionScoring` accepts."""

UTILITIES = ("accuracy", "negative-loss")
"""Validation utilities :class:`ContributionScoring` accepts."""

Method = Literal["gtg-shapley", "leave-one-out", "exact-shapley"]
UtilityName = Literal["accuracy", "negative-loss"]


class ContributionScoring(StrategyWrapper):
    """Score each participant's update on server validation data, then aggregate.

    In ``aggregate_train`` every usable reply's update ``local − global`` is
    scored (see ``method``), the scores are stored in :attr:`last_scores`
    (and :attr:`history`, by round), and the replies are handed unchanged
    to the wrapped strategy, whose aggregate is returned as is, with
    ``"scoring-evaluations"`` (distinct coalition utilities computed, the
    cost of scoring) added to its metrics.

    Wrap it inside :class:`~fedlearn.strategies.ValidatedReplies`
    (``ValidatedReplies(ContributionScoring(FedAvg(), ...), min_replies=...)``)
    so that only valid replies are scored and aggregated. Replies this wrapper
    cannot score (errors, wrong layout, NaN, a missing or non-positive example
    count, a second reply from the same node) are left out of the scores with
    a logged reason and still passed to the wrapped strategy.

    Parameters
    ----------
    strategy : Strategy
        The strategy that aggregates (FedAvg, FedAdam, ...).
    utility_data : Dataset
        The server's validation set (non-empty). It must not be the test set
        on which the final model is reported.
    model_fn : callable
        ``model_fn() -> torch.nn.Module``: builds a model with the global
        model's architecture (its weights are overwritten before each use).
    max_examples : int
        Cap on the example count (the aggregation weight) a client may claim
        when scoring. Counts are self-reported and a client may lie to weigh
        more in the coalitions it joins; capping bounds the damage to a
        factor ``max_examples / smallest honest count``. Attesting counts is
        the attestation layer's job. The cap applies to scoring only; the
        wrapped strategy aggregates with whatever weights it uses.
    method : {"gtg-shapley", "leave-one-out", "exact-shapley"}, default "gtg-shapley"
        A round with more than 12 scored participants is too large for
        ``"exact-shapley"`` (``2**n`` evaluations): it is then scored with
        GTG-Shapley, with a logged warning, and its scores say
        ``method="gtg-shapley"`` (a running federation is not aborted).
        ``"leave-one-out"`` is cheapest (``n + 1`` evaluations) but blind to
        redundancy: two clients with the same data both score about 0.
    utility : {"negative-loss", "accuracy"}, default "negative-loss"
        What a coalition's model is worth on ``utility_data``: its negative
        mean cross-entropy, or its accuracy. Accuracy moves in steps of
        ``1 / len(utility_data)``. On 360 digits validation examples, in six
        seeded federations with a noisy-label client and a duplicate client,
        accuracy ranked an honest client below one of them in 3 of 6 with
        leave-one-out and in 2 of 6 with GTG-Shapley; negative loss in none
        (the setup of tests/test_contribution.py), hence the default.
    seed : int, default 0
        GTG-Shapley's permutation sampling in round ``r`` is seeded by
        ``(seed, r)``: scores are reproducible, and a resumed run rescoring a
        round gets the same scores.
    round_tolerance, truncation_tolerance, convergence_tolerance : float
        GTG-Shapley's between-round truncation, within-round truncation (both
        in utility units) and convergence tolerance; defaults ``1e-3``,
        ``1e-3`` and ``0.05``. See :func:`~fedlearn.strategies.shapley.gtg_shapley`.
    convergence_window : int, default 3
        Consecutive calm cycles GTG-Shapley needs to stop.
    max_cycles : int, default 50
        GTG-Shapley's cap: at most ``max_cycles * n`` permutations per round.
    weighted_by_key : str, default EXAMPLES_KEY
        Metric that carries a reply's example count.

    Examples
    --------
    >>> from flwr.serverapp.strategy import FedAvg
    >>> from fedlearn.config import ModelConfig
    >>> from fedlearn.data import load_bundled, split_train_test
    >>> from fedlearn.models import build_model
    >>> data, _ = load_bundled("digits")
    >>> _, validation = split_train_test(data, test_fraction=0.1, seed=0)
    >>> strategy = ContributionScoring(
    ...     FedAvg(),
    ...     utility_data=validation,
    ...     model_fn=lambda: build_model(ModelConfig(), num_features=64, num_classes=10),
    ...     max_examples=500,
    ... )
    >>> strategy.method
    'gtg-shapley'
    """

    def __init__(
        self,
        strategy: Strategy,
        *,
        utility_data: Dataset,
        model_fn: Callable[[], nn.Module],
        max_examples: int,
        method: Method = "gtg-shapley",
        utility: UtilityName = "negative-loss",
        seed: int = 0,
        round_tolerance: float = 1e-3,
        truncation_tolerance: float = 1e-3,
        convergence_tolerance: float = 0.05,
        convergence_window: int = 3,
        max_cycles: int = 50,
        weighted_by_key: str = EXAMPLES_KEY,
    ) -> None:
        if method not in METHODS:
            raise ValueError(f"method must be one of {list(METHODS)}, got {method!r}")
        if utility not in UTILITIES:
            raise ValueError(f"utility must be one of {list(UTILITIES)}, got {utility!r}")
        if isinstance(max_examples, bool) or not isinstance(max_examples, int) or max_examples < 1:
            raise ValueError(f"max_examples must be an integer >= 1, got {max_examples!r}")
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ValueError(f"seed must be an integer >= 0, got {seed!r}")
        if not isinstance(utility_data, Dataset) or len(utility_data) == 0:
            raise ValueError(
                "utility_data must be a non-empty Dataset (the server's validation set)"
            )
        check_gtg_options(
            round_tolerance=round_tolerance,
            truncation_tolerance=truncation_tolerance,
            convergence_tolerance=convergence_tolerance,
            convergence_window=convergence_window,
            max_cycles=max_cycles,
        )
        self.strategy = strategy
        self.method: Method = method
        self.utility: UtilityName = utility
        self.max_examples = max_examples
        self.seed = seed
        self.round_tolerance = round_tolerance
        self.truncation_tolerance = truncation_tolerance
        self.convergence_tolerance = convergence_tolerance
        self.convergence_window = convergence_window
        self.max_cycles = max_cycles
        self.weighted_by_key = weighted_by_key
        self.utility_data = utility_data
        self._model = _checked_model(model_fn, utility_data)
        self._global: dict[str, NDArray[Any]] = {}
        self.last_scores: ContributionScores | None = None
        self.history: dict[int, ContributionScores] = {}

    # ------------------------------------------------------------------ Strategy hooks

    def summary(self) -> None:
        """Log the wrapped strategy's summary and the scoring method."""
        self.strategy.summary()
        log.info(
            "ContributionScoring: %s on %d validation examples (%s), example counts capped at %d",
            self.method,
            len(self.utility_data),
            self.utility,
            self.max_examples,
        )

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Remember the global model the updates are relative to, then delegate."""
        expected = {k: tuple(v.shape) for k, v in self._model.state_dict().items()}
        got = {k: tuple(a.shape) for k, a in arrays.items()}
        if got != expected:
            raise ValueError(
                f"the global model's arrays {got} do not match model_fn's model {expected}"
            )
        self._global = {k: a.numpy() for k, a in arrays.items()}
        self.last_scores = None
        return self.strategy.configure_train(server_round, arrays, config, grid)

    def round_scores(self) -> RoundScores | None:
        """Scores of the round just aggregated, for the layers above (``ScoresContributions``)."""
        scored = self.last_scores
        if scored is None:
            return None
        return RoundScores(
            scores=dict(scored.scores), method=scored.method, evaluations=scored.evaluations
        )

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Score the usable replies, then return the wrapped strategy's aggregate."""
        replies = list(replies)
        self.last_scores = self.score(server_round, replies)
        if self.last_scores is not None:
            self.history[server_round] = self.last_scores
        arrays, metrics = self.strategy.aggregate_train(server_round, replies)
        if self.last_scores is not None:
            metrics = metrics if metrics is not None else MetricRecord()
            metrics["scoring-evaluations"] = self.last_scores.evaluations
        return arrays, metrics

    # ------------------------------------------------------------------ scoring

    def score(self, server_round: int, replies: Iterable[Message]) -> ContributionScores | None:
        """Score the usable replies of a round (``None`` if none is usable).

        Parameters
        ----------
        server_round : int
            The round (seeds GTG-Shapley's sampling together with ``seed``).
        replies : iterable of Message
            Training replies to the instructions of :meth:`configure_train`.
        """
        if not self._global:
            raise RuntimeError("configure_train must run before replies can be scored")
        updates: dict[int, dict[str, NDArray[np.float64]]] = {}
        weights: dict[int, float] = {}
        for msg in replies:
            node = msg.metadata.src_node_id
            reason = "a second reply from this node" if node in updates else self._unusable(msg)
            if reason is not None:
                log.warning("round %d: reply of node %d not scored: %s", server_round, node, reason)
                continue
            record = next(iter(msg.content.array_records.values()))
            updates[node] = {
                k: a.numpy().astype(np.float64) - self._global[k].astype(np.float64)
                for k, a in record.items()
            }
            claimed = next(iter(msg.content.metric_records.values()))[self.weighted_by_key]
            assert isinstance(claimed, int | float)  # checked by _unusable
            weights[node] = min(float(claimed), float(self.max_examples))
        if not updates:
            log.warning("round %d: no reply could be scored", server_round)
            return None
        utility = update_utility(updates=updates, weights=weights, evaluate=self._evaluate)
        if self.method == "leave-one-out":
            return leave_one_out(utility, clients=updates)
        if self.method == "exact-shapley":
            if len(updates) <= _MAX_EXACT_CLIENTS:
                return exact_shapley(utility, clients=updates, max_clients=_MAX_EXACT_CLIENTS)
            log.warning(
                "round %d: %d participants are too many for exact Shapley (2**%d evaluations); "
                "scoring with GTG-Shapley instead",
                server_round,
                len(updates),
                len(updates),
            )
        seed = int(np.random.SeedSequence([self.seed, server_round]).generate_state(1)[0])
        return gtg_shapley(
            utility,
            clients=updates,
            seed=seed,
            round_tolerance=self.round_tolerance,
            truncation_tolerance=self.truncation_tolerance,
            convergence_tolerance=self.convergence_tolerance,
            convergence_window=self.convergence_window,
            max_cycles=self.max_cycles,
        )

    def _unusable(self, msg: Message) -> str | None:
        if msg.has_error():
            return f"client error: {msg.error.reason}"
        content = msg.content
        if len(content.array_records) != 1 or len(content.metric_records) != 1:
            return "expected exactly one ArrayRecord and one MetricRecord"
        record = next(iter(content.array_records.values()))
        if set(record.keys()) != set(self._global):
            return f"array keys {sorted(record.keys())} differ from the model's"
        for key, array in record.items():
            if tuple(array.shape) != self._global[key].shape:
                return f"array {key!r} has shape {list(array.shape)}"
            if not np.isfinite(array.numpy()).all():
                return f"array {key!r} contains NaN or infinity"
        weight = next(iter(content.metric_records.values())).get(self.weighted_by_key)
        if not isinstance(weight, int | float) or not math.isfinite(weight) or weight <= 0:
            return f"metric {self.weighted_by_key!r} must be a positive number, got {weight!r}"
        return None

    def _evaluate(self, aggregate: dict[str, NDArray[np.float64]]) -> float:
        state: dict[str, torch.Tensor] = {}
        for key, base in self._global.items():
            if np.issubdtype(base.dtype, np.floating):
                moved = (base.astype(np.float64) + aggregate[key]).astype(base.dtype)
            else:
                moved = base  # integer buffers (counters) are not averaged
            state[key] = torch.from_numpy(np.ascontiguousarray(moved))
        self._model.load_state_dict(state, strict=True)
        result = evaluate(self._model, self.utility_data)
        return result.accuracy if self.utility == "accuracy" else -result.loss


def _checked_model(model_fn: Callable[[], nn.Module], data: Dataset) -> nn.Module:
    """Build the scoring model once and check that it accepts the validation data."""
    model = model_fn()
    if not isinstance(model, nn.Module):
        raise ValueError(f"model_fn must return a torch.nn.Module, got {type(model).__name__}")
    with torch.no_grad():
        try:
            logits = model.eval()(torch.from_numpy(data.x[:1]))
        except RuntimeError as exc:
            raise ValueError(
                f"model_fn's model cannot read utility_data features of shape {data.x.shape}: {exc}"
            ) from None
    classes = int(data.y.max()) + 1
    if logits.ndim != 2 or logits.shape[1] < classes:
        raise ValueError(
            f"model_fn's model outputs {tuple(logits.shape)} per example; utility_data has "
            f"labels up to {classes - 1}"
        )
    return model
