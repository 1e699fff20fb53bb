"""Contribution scoring: closed-form games, agreement with exact Shapley, a real federation.

Tolerances are stated where they are used. The real-data tests train
logistic regression on scikit-learn's digits from one common global model
(a single round), so every figure below is a deterministic function of the
seeds in this file.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Error, Message, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAvg
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from fedlearn.config import DataConfig, ModelConfig, TrainConfig
from fedlearn.data import Dataset, partition_bundled
from fedlearn.models import build_model
from fedlearn.strategies import ValidatedReplies
from fedlearn.strategies.contribution import ContributionScoring
from fedlearn.strategies.shapley import (
    ContributionScores,
    accumulate,
    exact_shapley,
    gtg_shapley,
    leave_one_out,
    reward_shares,
    update_utility,
)
from fedlearn.training import evaluate, train
from fedlearn.wire import EXAMPLES_KEY
from tests.flower_messages import node_list_grid

torch.set_num_threads(1)

SPEC = ModelConfig(name="logreg")
LOCAL = TrainConfig(local_epochs=3, batch_size=16, learning_rate=0.05, momentum=0.9)
NOISY, DUPLICATE, TWIN = 4, 5, 0  # client indices in the six-client federation


def _model() -> nn.Module:
    return build_model(SPEC, num_features=64, num_classes=10)


@dataclass
class _TrainedRound:
    """One round trained from a common global model: what the server would receive."""

    global_state: dict[str, np.ndarray]
    local_states: dict[int, dict[str, np.ndarray]]
    examples: dict[int, int]
    validation: Dataset

    @property
    def updates(self) -> dict[int, dict[str, np.ndarray]]:
        return {
            k: {n: s[n].astype(np.float64) - self.global_state[n].astype(np.float64) for n in s}
            for k, s in self.local_states.items()
        }

    def utility(self, weights: dict[int, float] | None = None) -> Callable[[frozenset[int]], float]:
        """Negative validation loss of global + weighted mean update, memoised."""
        model = _model()

        def negative_loss(aggregate: dict[str, np.ndarray]) -> float:
            state = {
                k: torch.from_numpy((v.astype(np.float64) + aggregate[k]).astype(np.float32))
                for k, v in self.global_state.items()
            }
            model.load_state_dict(state)
            return -evaluate(model, self.validation).loss

        base = update_utility(
            updates=self.updates,
            weights=weights or {k: float(n) for k, n in self.examples.items()},
            evaluate=negative_loss,
        )
        cache: dict[frozenset[int], float] = {}

        def memoised(coalition: frozenset[int]) -> float:
            if coalition not in cache:
                cache[coalition] = base(coalition)
            return cache[coalition]

        return memoised


def _train_round(parts: list[Dataset], validation: Dataset, *, seed: int) -> _TrainedRound:
    torch.manual_seed(seed)
    global_model = _model()
    global_state = {k: v.detach().numpy().copy() for k, v in global_model.state_dict().items()}
    local_states = {}
    for client, data in enumerate(parts):
        local = _model()
        local.load_state_dict(global_model.state_dict())
        train(local, data, LOCAL, seed=100 * seed + client)
        local_states[client] = {k: v.detach().numpy().copy() for k, v in local.state_dict().items()}
    return _TrainedRound(
        global_state=global_state,
        local_states=local_states,
        examples={k: len(d) for k, d in enumerate(parts)},
        validation=validation,
    )


@pytest.fixture(scope="module")
def federation() -> _TrainedRound:
    """Six IID digits clients; client 4 has random labels, client 5 a copy of half of client 0."""
    parts, validation, _ = partition_bundled(
        DataConfig(dataset="digits", partitioner="iid"), clients=6, seed=0
    )
    rng = np.random.default_rng(0)
    noisy = parts[NOISY]
    parts[NOISY] = Dataset(noisy.x, rng.integers(0, 10, len(noisy)).astype(np.int64))
    half = np.sort(rng.choice(len(parts[TWIN]), len(parts[TWIN]) // 2, replace=False))
    parts[DUPLICATE] = parts[TWIN].subset(half)
    return _train_round(parts, validation, seed=0)


@pytest.fixture(scope="module")
def four_clients() -> _TrainedRound:
    """Four label-skewed (Dirichlet 0.5) digits clients: clearly different contributions."""
    parts, validation, _ = partition_bundled(
        DataConfig(dataset="digits", partitioner="dirichlet", alpha=0.5), clients=4, seed=3
    )
    return _train_round(parts, validation, seed=0)


# --------------------------------------------------------------------------- closed forms

VALUES = {1: 0.5, 2: -0.2, 3: 0.1, 4: 0.0, 5: 0.3}


def _additive(coalition: frozenset[int]) -> float:
    return sum(VALUES[k] for k in coalition)


def test_additive_game_every_method_returns_each_clients_own_value() -> None:
    # u(S) = Σ v_k: every marginal of k is v_k, so Shapley = LOO = v_k exactly.
    for scores in (
        exact_shapley(_additive, clients=VALUES),
        leave_one_out(_additive, clients=VALUES),
        gtg_shapley(_additive, clients=VALUES, seed=0, truncation_tolerance=0.0),
        gtg_shapley(_additive, clients=VALUES, seed=1),
    ):
        assert scores.scores == pytest.approx(VALUES, abs=1e-12), scores.method


def test_gtg_stops_as_early_as_its_rule_allows_when_the_estimate_never_moves() -> None:
    # Marginals do not depend on the order, so every cycle is calm: the rule
    # (first check after 2 cycles, 3 calm cycles in a row) stops after 4 cycles.
    scores = gtg_shapley(_additive, clients=VALUES, seed=0, convergence_window=3)
    assert scores.converged
    assert scores.permutations == 4 * len(VALUES)


def test_squared_game_matches_its_closed_form() -> None:
    # u(S) = (Σ_S v)²  =  Σ_i v_i² + Σ_{i<j} 2 v_i v_j: each pair term is split
    # equally, so φ_k = v_k · V with V = Σ v; LOO_k = V² − (V − v_k)².
    total = sum(VALUES.values())

    def squared(coalition: frozenset[int]) -> float:
        return _additive(coalition) ** 2

    exact = exact_shapley(squared, clients=VALUES)
    assert exact.scores == pytest.approx({k: v * total for k, v in VALUES.items()}, abs=1e-12)
    loo = leave_one_out(squared, clients=VALUES)
    expected = {k: total**2 - (total - v) ** 2 for k, v in VALUES.items()}
    assert loo.scores == pytest.approx(expected, abs=1e-12)


def test_unanimity_game_credits_only_the_required_clients() -> None:
    required = frozenset({2, 3})

    def unanimity(coalition: frozenset[int]) -> float:
        return 1.0 if required <= coalition else 0.0

    exact = exact_shapley(unanimity, clients=range(1, 6))
    assert exact.scores == pytest.approx({1: 0.0, 2: 0.5, 3: 0.5, 4: 0.0, 5: 0.0}, abs=1e-12)
    gtg = gtg_shapley(unanimity, clients=range(1, 6), seed=0, truncation_tolerance=0.0)
    # Null players never have a marginal gain; without truncation every
    # permutation's marginals sum to u(N) − u(∅) = 1.
    assert [gtg.scores[k] for k in (1, 4, 5)] == [0.0, 0.0, 0.0]
    assert sum(gtg.scores.values()) == pytest.approx(1.0, abs=1e-12)


def test_evaluation_counts() -> None:
    assert leave_one_out(_additive, clients=VALUES).evaluations == len(VALUES) + 1
    assert exact_shapley(_additive, clients=VALUES).evaluations == 2 ** len(VALUES)
    gtg = gtg_shapley(_additive, clients=VALUES, seed=0)
    assert gtg.evaluations <= 2 ** len(VALUES)


def test_between_round_truncation_skips_a_round_that_changed_nothing() -> None:
    calls: list[frozenset[int]] = []

    def flat(coalition: frozenset[int]) -> float:
        calls.append(coalition)
        return 0.8 + 1e-4 * len(coalition)  # u(N) − u(∅) = 5e-4 < 1e-3

    scores = gtg_shapley(flat, clients=VALUES, seed=0, round_tolerance=1e-3)
    assert scores.round_truncated
    assert scores.scores == dict.fromkeys(VALUES, 0.0)
    assert scores.evaluations == 2 and sorted(map(len, calls)) == [0, len(VALUES)]


# --------------------------------------------------------------------------- efficiency


def test_exact_shapley_is_efficient_on_a_real_round(federation: _TrainedRound) -> None:
    exact = exact_shapley(federation.utility(), clients=range(6))
    assert exact.utility_empty is not None
    gain = exact.utility_all - exact.utility_empty
    assert gain > 0.5  # the round clearly improved the model (negative loss, nats)
    assert sum(exact.scores.values()) == pytest.approx(gain, rel=1e-9)


@settings(max_examples=60, deadline=None)
@given(
    values=st.lists(
        st.floats(-10, 10, allow_nan=False, allow_infinity=False), min_size=2, max_size=64
    ),
    seed=st.integers(0, 2**32 - 1),
)
def test_efficiency_holds_for_arbitrary_games(values: list[float], seed: int) -> None:
    # A random game on n = floor(log2(len(values))) players (coalition = bitmask).
    n = int(math.log2(len(values)))
    table = values[: 2**n]

    def utility(coalition: frozenset[int]) -> float:
        return table[sum(1 << k for k in coalition)]

    gain = table[-1] - table[0]
    exact = exact_shapley(utility, clients=range(n))
    assert sum(exact.scores.values()) == pytest.approx(gain, abs=1e-9 * (1 + abs(gain)) * 2**n)
    # GTG: each permutation's marginals telescope to u(N) − u(∅), or, when
    # truncated, stop within truncation_tolerance of it.
    for tolerance in (0.0, 0.5):
        gtg = gtg_shapley(
            utility,
            clients=range(n),
            seed=seed,
            round_tolerance=0.0,
            truncation_tolerance=tolerance,
        )
        assert abs(sum(gtg.scores.values()) - gain) <= tolerance + 1e-9 * (1 + abs(gain))


# --------------------------------------------------------------------------- GTG vs exact


def test_gtg_shapley_agrees_with_exact_shapley_on_four_clients(
    four_clients: _TrainedRound,
) -> None:
    """Per seed, max |GTG − exact| ≤ 0.15 ‖φ‖₁; over 20 seeds, mean of that error ≤ 0.05 ‖φ‖₁.

    ‖φ‖₁ = Σ|φ_k| is the value the round hands out, so the bound caps how much
    of it a client's estimate can misplace. Measured on this round with
    convergence_tolerance=0.02 over 300 seeds: worst 0.086 ‖φ‖₁, mean 0.027.
    """
    utility = four_clients.utility()
    exact = exact_shapley(utility, clients=range(4))
    phi = np.array([exact.scores[k] for k in range(4)])
    l1 = float(np.abs(phi).sum())
    assert np.ptp(phi) > 0.25 * l1  # the clients really differ (label skew)
    errors = []
    for seed in range(20):
        gtg = gtg_shapley(utility, clients=range(4), seed=seed, convergence_tolerance=0.02)
        assert gtg.converged and gtg.evaluations <= 2**4
        estimate = np.array([gtg.scores[k] for k in range(4)])
        errors.append(float(np.abs(estimate - phi).max()) / l1)
    assert max(errors) <= 0.15, errors
    assert float(np.mean(errors)) <= 0.05, errors


# --------------------------------------------------------------------------- federation


@pytest.mark.parametrize(
    "method",
    ["leave-one-out", "exact-shapley", "gtg-shapley:0", "gtg-shapley:1", "gtg-shapley:2"],
)
def test_noisy_and_duplicate_clients_score_lowest(federation: _TrainedRound, method: str) -> None:
    utility = federation.utility()
    if method == "leave-one-out":
        scores = leave_one_out(utility, clients=range(6))
    elif method == "exact-shapley":
        scores = exact_shapley(utility, clients=range(6))
    else:
        scores = gtg_shapley(utility, clients=range(6), seed=int(method.split(":")[1]))
    ranked = sorted(scores.scores, key=scores.scores.__getitem__)
    assert set(ranked[:2]) == {NOISY, DUPLICATE}, scores.scores
    assert scores.scores[NOISY] < 0  # random labels make the model worse
    # The duplicate's data is already brought by its twin: it adds less than the twin.
    assert scores.scores[DUPLICATE] < scores.scores[TWIN]


# --------------------------------------------------------------------------- across rounds


def _scores(scores: dict[int, float], *, truncated: bool = False) -> ContributionScores:
    return ContributionScores(
        scores=scores, evaluations=1, method="test", utility_all=0.0, round_truncated=truncated
    )


def test_accumulate_normalises_by_rounds_scored_in() -> None:
    # Client 2 was sampled in one round of three; per round it did as well as client 1.
    rounds = [
        _scores({1: 0.2, 3: 0.1}),
        _scores({1: 0.2, 2: 0.2, 3: -0.1}),
        _scores({1: 0.2, 3: 0.3}),
        _scores({1: 0.0, 2: 0.0}, truncated=True),  # credits nobody, not a participation
    ]
    totals = accumulate(rounds)
    assert {k: v.rounds for k, v in totals.items()} == {1: 3, 2: 1, 3: 3}
    assert totals[1].total == pytest.approx(0.6)
    assert totals[1].per_round == pytest.approx(totals[2].per_round)
    assert totals[3].per_round == pytest.approx(0.1)


def test_reward_shares_are_non_negative_and_sum_to_one() -> None:
    shares = reward_shares({1: 3.0, 2: 1.0, 3: -2.0, 4: 0.0})
    assert shares == pytest.approx({1: 0.75, 2: 0.25, 3: 0.0, 4: 0.0})
    assert reward_shares({1: -1.0, 2: 0.0}) == {1: 0.0, 2: 0.0}  # nobody earned anything


# --------------------------------------------------------------------------- invalid input


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: exact_shapley(_additive, clients=range(13)), "refused above max_clients=12"),
        (lambda: leave_one_out(_additive, clients=[]), "at least one"),
        (lambda: leave_one_out(_additive, clients=[1, 1]), "distinct"),
        (lambda: leave_one_out(_additive, clients=["a"]), "integers"),  # type: ignore[list-item]
        (lambda: leave_one_out(lambda s: math.nan, clients=[1]), "must be finite"),
        (lambda: gtg_shapley(_additive, clients=[1], seed=0, round_tolerance=-1), "round_tol"),
        (
            lambda: gtg_shapley(_additive, clients=[1], seed=0, truncation_tolerance=math.inf),
            "truncation_tolerance",
        ),
        (
            lambda: gtg_shapley(_additive, clients=[1], seed=0, convergence_tolerance=0),
            "convergence_tolerance",
        ),
        (lambda: gtg_shapley(_additive, clients=[1], seed=0, max_cycles=0), "max_cycles"),
        (
            lambda: gtg_shapley(_additive, clients=[1], seed=0, convergence_window=0),
            "convergence_window",
        ),
        (
            lambda: update_utility(updates={1: np.ones(2)}, weights={2: 1.0}, evaluate=sum),
            "must be the same",
        ),
        (
            lambda: update_utility(updates={1: np.ones(2)}, weights={1: 0.0}, evaluate=sum),
            "positive",
        ),
        (
            lambda: update_utility(
                updates={1: np.ones(2), 2: np.ones(3)}, weights={1: 1.0, 2: 1.0}, evaluate=sum
            ),
            "shape",
        ),
        (
            lambda: update_utility(updates={1: np.array([np.nan])}, weights={1: 1.0}, evaluate=sum),
            "NaN",
        ),
        (lambda: reward_shares({1: math.nan}), "finite"),
    ],
)
def test_invalid_input_is_refused(call: Callable[[], object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        call()


# --------------------------------------------------------------------------- Flower wrapper


def _wrapper(validation: Dataset, **kwargs: object) -> ContributionScoring:
    options: dict[str, object] = {"max_examples": 1000} | kwargs
    return ContributionScoring(
        FedAvg(),
        utility_data=validation,
        model_fn=_model,
        **options,  # type: ignore[arg-type]
    )


def _instructions(
    strategy: ContributionScoring | ValidatedReplies, rnd: _TrainedRound
) -> list[Message]:
    arrays = ArrayRecord({k: Array(v) for k, v in rnd.global_state.items()})
    messages = list(strategy.configure_train(1, arrays, ConfigRecord(), node_list_grid(6)))
    assert sorted(m.metadata.dst_node_id for m in messages) == [1, 2, 3, 4, 5, 6]
    return messages


def _replies(
    instructions: list[Message], rnd: _TrainedRound, claims: dict[int, int] | None = None
) -> list[Message]:
    """Node ``k + 1`` replies with client ``k``'s trained model."""
    replies = []
    for msg in instructions:
        node = msg.metadata.dst_node_id
        examples = (claims or {}).get(node, rnd.examples[node - 1])
        content = RecordDict(
            {
                "arrays": ArrayRecord({k: Array(v) for k, v in rnd.local_states[node - 1].items()}),
                "metrics": MetricRecord({EXAMPLES_KEY: examples}),
            }
        )
        replies.append(Message(content, reply_to=msg))
    return replies


def _by_node(scores: dict[int, float]) -> dict[int, float]:
    return {k + 1: v for k, v in scores.items()}


@pytest.mark.usefixtures("as_serverapp")
def test_wrapper_scores_replies_and_leaves_aggregation_unchanged(
    federation: _TrainedRound,
) -> None:
    strategy = _wrapper(federation.validation, method="leave-one-out")
    replies = _replies(_instructions(strategy, federation), federation)
    arrays, metrics = strategy.aggregate_train(1, replies)

    alone = FedAvg()
    expected_arrays, expected_metrics = alone.aggregate_train(1, replies)
    assert arrays is not None and expected_arrays is not None and metrics is not None
    for key in expected_arrays:
        np.testing.assert_array_equal(arrays[key].numpy(), expected_arrays[key].numpy())
    assert expected_metrics is not None
    assert dict(metrics) == dict(expected_metrics) | {"scoring-evaluations": 7}

    scored = strategy.last_scores
    assert scored is not None and strategy.history == {1: scored}
    direct = leave_one_out(federation.utility(), clients=range(6))
    assert scored.scores == pytest.approx(_by_node(direct.scores), rel=1e-9, abs=1e-12)


@pytest.mark.usefixtures("as_serverapp")
def test_wrapper_default_gtg_ranks_noisy_and_duplicate_nodes_lowest(
    federation: _TrainedRound,
) -> None:
    strategy = _wrapper(federation.validation)  # GTG-Shapley on negative loss
    strategy.aggregate_train(1, _replies(_instructions(strategy, federation), federation))
    scored = strategy.last_scores
    assert scored is not None and scored.method == "gtg-shapley" and scored.converged
    ranked = sorted(scored.scores, key=scored.scores.__getitem__)
    assert set(ranked[:2]) == {NOISY + 1, DUPLICATE + 1}
    # Reproducible: the same seed and round give the same scores.
    again = _wrapper(federation.validation)
    again.aggregate_train(1, _replies(_instructions(again, federation), federation))
    assert again.last_scores == scored


@pytest.mark.usefixtures("as_serverapp")
def test_claimed_example_counts_are_capped(federation: _TrainedRound) -> None:
    # Node 1 claims a billion examples; scoring weighs it as max_examples.
    strategy = _wrapper(federation.validation, method="exact-shapley", max_examples=500)
    instructions = _instructions(strategy, federation)
    strategy.aggregate_train(1, _replies(instructions, federation, claims={1: 10**9}))
    capped = {k: float(n) for k, n in federation.examples.items()} | {0: 500.0}
    direct = exact_shapley(federation.utility(weights=capped), clients=range(6))
    assert strategy.last_scores is not None
    assert strategy.last_scores.scores == pytest.approx(_by_node(direct.scores), rel=1e-9)


@pytest.mark.usefixtures("as_serverapp")
def test_unusable_replies_are_not_scored_but_still_reach_the_strategy(
    federation: _TrainedRound,
) -> None:
    strategy = ValidatedReplies(
        _wrapper(federation.validation, method="leave-one-out"), min_replies=2
    )
    instructions = _instructions(strategy, federation)
    replies = _replies(instructions[:4], federation)
    replies.append(Message(Error(code=1, reason="out of budget"), reply_to=instructions[4]))
    nan_state = {k: np.full_like(v, np.nan) for k, v in federation.global_state.items()}
    bad = RecordDict(
        {
            "arrays": ArrayRecord({k: Array(v) for k, v in nan_state.items()}),
            "metrics": MetricRecord({EXAMPLES_KEY: 10}),
        }
    )
    replies.append(Message(bad, reply_to=instructions[5]))
    arrays, metrics = strategy.aggregate_train(1, replies)
    assert arrays is not None and metrics is not None
    inner = strategy.strategy
    assert isinstance(inner, ContributionScoring) and inner.last_scores is not None
    good = {m.metadata.dst_node_id for m in instructions[:4]}
    assert set(inner.last_scores.scores) == good
    assert metrics["scoring-evaluations"] == len(good) + 1
    # Scored directly, without the wrapper, the same four nodes get the same scores.
    unwrapped = _wrapper(federation.validation, method="leave-one-out")
    unwrapped.configure_train(
        1,
        ArrayRecord({k: Array(v) for k, v in federation.global_state.items()}),
        ConfigRecord(),
        node_list_grid(6),
    )
    alone = unwrapped.score(1, _replies(instructions[:4], federation))
    assert alone is not None and alone.scores == pytest.approx(inner.last_scores.scores)
    # A second reply from a node is not scored again.
    twice = _replies(instructions[:4], federation)
    again = unwrapped.score(1, [*twice, twice[0]])
    assert again is not None and again.scores == alone.scores


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"method": "banzhaf"}, "method must be one of"),
        ({"utility": "f1"}, "utility must be one of"),
        ({"max_examples": 0}, "max_examples"),
        ({"seed": -1}, "seed"),
        ({"convergence_tolerance": 0.0}, "convergence_tolerance"),
        ({"max_cycles": 0}, "max_cycles"),
        ({"round_tolerance": math.nan}, "round_tolerance"),
    ],
)
def test_wrapper_refuses_invalid_parameters(
    federation: _TrainedRound, kwargs: dict[str, object], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        _wrapper(federation.validation, **kwargs)


def test_wrapper_refuses_a_model_or_data_that_do_not_fit(federation: _TrainedRound) -> None:
    empty = federation.validation.subset(np.arange(0, dtype=np.int64))
    with pytest.raises(ValueError, match="non-empty"):
        _wrapper(empty)
    with pytest.raises(ValueError, match="cannot read utility_data"):
        ContributionScoring(
            FedAvg(),
            utility_data=federation.validation,
            model_fn=lambda: build_model(SPEC, num_features=32, num_classes=10),
            max_examples=100,
        )
    with pytest.raises(ValueError, match="labels up to 9"):
        ContributionScoring(
            FedAvg(),
            utility_data=federation.validation,
            model_fn=lambda: build_model(SPEC, num_features=64, num_classes=5),
            max_examples=100,
        )


@pytest.mark.usefixtures("as_serverapp")
def test_exact_method_on_a_round_too_large_for_it_falls_back_to_gtg_and_says_so() -> None:
    rng = np.random.default_rng(0)
    validation = Dataset(rng.random((40, 64), dtype=np.float32), np.arange(40) % 10)
    strategy = ContributionScoring(
        FedAvg(), utility_data=validation, model_fn=_model, max_examples=10, method="exact-shapley"
    )
    global_state = {k: v.detach().numpy() for k, v in _model().state_dict().items()}
    arrays = ArrayRecord({k: Array(v) for k, v in global_state.items()})
    instructions = list(strategy.configure_train(1, arrays, ConfigRecord(), node_list_grid(13)))
    replies = [
        Message(
            RecordDict(
                {
                    "arrays": ArrayRecord(
                        {
                            k: Array(v + rng.normal(0, 0.1, v.shape).astype(np.float32))
                            for k, v in global_state.items()
                        }
                    ),
                    "metrics": MetricRecord({EXAMPLES_KEY: 5}),
                }
            ),
            reply_to=msg,
        )
        for msg in instructions
    ]
    scored = strategy.score(1, replies)
    assert scored is not None and scored.method == "gtg-shapley" and len(scored.scores) == 13
