"""Per-round contribution scores: leave-one-out, exact and GTG-Shapley.

Every algorithm here scores the participants of **one round** from a utility
function over coalitions, ``utility(subset) -> float``: typically the
validation accuracy (or negative loss) of the current global model plus the
weighted average of the subset's updates, where the empty subset is the
current global model itself (:func:`update_utility` builds that function from
the round's updates). Utilities are memoised per call, and
:attr:`ContributionScores.evaluations` counts the *distinct* coalitions that
were evaluated: that is the cost of scoring.

* :func:`leave_one_out`: ``u(N) − u(N ∖ {k})``; ``n + 1`` evaluations.
* :func:`exact_shapley`: enumeration of all ``2**n`` coalitions (refused above
  ``max_clients``).
* :func:`gtg_shapley`: Monte-Carlo Shapley in the spirit of GTG-Shapley
  (Liu et al., "GTG-Shapley: Efficient and Accurate Participant Contribution
  Evaluation in Federated Learning", ACM TIST 2022): between-round truncation,
  within-round truncation, guided sampling and a convergence criterion.

Scores from different rounds are combined with :func:`accumulate`, which
normalises by the number of rounds a client was scored in (a client sampled
less often is not punished for it), and turned into reward shares with
:func:`reward_shares`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, TypeAlias

import numpy as np
from numpy.typing import NDArray

__all__ = [
    "ClientContribution",
    "ContributionScores",
    "Update",
    "Utility",
    "accumulate",
    "check_gtg_options",
    "exact_shapley",
    "gtg_shapley",
    "leave_one_out",
    "reward_shares",
    "update_utility",
]

Utility: TypeAlias = Callable[[frozenset[int]], float]
"""A coalition's value: ``utility(frozenset of client ids) -> float``."""

Update: TypeAlias = NDArray[np.floating[Any]] | Mapping[str, NDArray[np.floating[Any]]]
"""One client's update (local − global): a flat vector or a dict of arrays."""

_MAX_EXACT_CLIENTS = 12


@dataclass(frozen=True, kw_only=True)
class ContributionScores:
    """The contribution scores of one round's participants.

    Attributes
    ----------
    scores : dict[int, float]
        Client id → score, in utility units (e.g. accuracy points).
    evaluations : int
        Distinct coalition utilities that were computed (the scoring cost).
    method : str
        ``"leave-one-out"``, ``"exact-shapley"`` or ``"gtg-shapley"``.
    utility_all : float
        ``u(N)``: the utility of all participants together.
    utility_empty : float or None
        ``u(∅)``: the utility of the current global model (``None`` for
        leave-one-out, which does not need it).
    permutations : int
        Permutations sampled (GTG-Shapley only; 0 otherwise).
    converged : bool
        Whether the estimate met its convergence criterion (always ``True``
        for the deterministic methods and for a truncated round).
    round_truncated : bool
        GTG-Shapley's between-round truncation fired: the round changed the
        utility by less than the tolerance, so nobody is credited and the
        round does not count as a scored participation in :func:`accumulate`.
    """

    scores: dict[int, float]
    evaluations: int
    method: str
    utility_all: float
    utility_empty: float | None = None
    permutations: int = 0
    converged: bool = True
    round_truncated: bool = False


class _Memo:
    """Memoise a utility and count the distinct coalitions evaluated."""

    def __init__(self, utility: Utility) -> None:
        self._utility = utility
        self._cache: dict[frozenset[int], float] = {}

    def __call__(self, coalition: frozenset[int]) -> float:
        if coalition not in self._cache:
            value = float(self._utility(coalition))
            if not math.isfinite(value):
                raise ValueError(
                    f"utility of coalition {sorted(coalition)} is {value}; it must be finite"
                )
            self._cache[coalition] = value
        return self._cache[coalition]

    @property
    def evaluations(self) -> int:
        return len(self._cache)


def _players(clients: Iterable[int]) -> list[int]:
    players = list(clients)
    if not players:
        raise ValueError("clients must name at least one participant")
    if len(set(players)) != len(players):
        raise ValueError(f"client ids must be distinct, got {players}")
    for c in players:
        if isinstance(c, bool) or not isinstance(c, int | np.integer):
            raise ValueError(f"client ids must be integers, got {c!r}")
    return sorted(int(c) for c in players)


def _positive_int(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")


def check_gtg_options(
    *,
    round_tolerance: float,
    truncation_tolerance: float,
    convergence_tolerance: float,
    convergence_window: int,
    max_cycles: int,
) -> None:
    """Raise ``ValueError`` naming the first invalid :func:`gtg_shapley` option."""
    for name, value in (
        ("round_tolerance", round_tolerance),
        ("truncation_tolerance", truncation_tolerance),
    ):
        if not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
            raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    if (
        not isinstance(convergence_tolerance, int | float)
        or not math.isfinite(convergence_tolerance)
        or convergence_tolerance <= 0
    ):
        raise ValueError(f"convergence_tolerance must be > 0, got {convergence_tolerance!r}")
    _positive_int("convergence_window", convergence_window)
    _positive_int("max_cycles", max_cycles)


# --------------------------------------------------------------------------- algorithms


def leave_one_out(utility: Utility, *, clients: Iterable[int]) -> ContributionScores:
    """Score each client by what the others lose without it: ``u(N) − u(N ∖ {k})``.

    Costs ``n + 1`` utility evaluations. Leave-one-out is blind to redundancy:
    two clients holding the same data both score about zero, because each one
    is replaceable by the other.

    Parameters
    ----------
    utility : Utility
        Value of a coalition (see :func:`update_utility`).
    clients : iterable of int
        The round's participants (distinct ids, at least one).

    Returns
    -------
    ContributionScores
        With ``method="leave-one-out"``.

    Examples
    --------
    >>> scores = leave_one_out(lambda s: float(len(s)), clients=[1, 2, 3])
    >>> scores.scores, scores.evaluations
    ({1: 1.0, 2: 1.0, 3: 1.0}, 4)
    """
    players = _players(clients)
    u = _Memo(utility)
    everyone = frozenset(players)
    u_all = u(everyone)
    scores = {k: u_all - u(everyone - {k}) for k in players}
    return ContributionScores(
        scores=scores, evaluations=u.evaluations, method="leave-one-out", utility_all=u_all
    )


def exact_shapley(
    utility: Utility, *, clients: Iterable[int], max_clients: int = _MAX_EXACT_CLIENTS
) -> ContributionScores:
    """Shapley values by enumerating all ``2**n`` coalitions.

    ``φ_k = Σ_{S ⊆ N ∖ {k}} |S|! (n − |S| − 1)! / n! · (u(S ∪ {k}) − u(S))``.
    The scores satisfy efficiency exactly (up to rounding):
    ``Σ φ_k = u(N) − u(∅)``.

    Parameters
    ----------
    utility : Utility
        Value of a coalition.
    clients : iterable of int
        The round's participants.
    max_clients : int, default 12
        Refuse larger rounds (``2**12 = 4096`` evaluations); use
        :func:`gtg_shapley` there.

    Raises
    ------
    ValueError
        More than ``max_clients`` participants, or invalid ``clients``.

    Examples
    --------
    >>> exact_shapley(lambda s: float(len(s) ** 2), clients=[1, 2]).scores
    {1: 2.0, 2: 2.0}
    """
    if max_clients < 1:
        raise ValueError(f"max_clients must be >= 1, got {max_clients}")
    players = _players(clients)
    n = len(players)
    if n > max_clients:
        raise ValueError(
            f"exact Shapley needs 2**{n} = {2**n} utility evaluations for {n} clients; "
            f"it is refused above max_clients={max_clients}. Use gtg_shapley instead"
        )
    u = _Memo(utility)
    coeff = [math.factorial(s) * math.factorial(n - s - 1) / math.factorial(n) for s in range(n)]
    scores = dict.fromkeys(players, 0.0)
    for mask in range(1 << n):
        coalition = frozenset(p for i, p in enumerate(players) if mask >> i & 1)
        value = u(coalition)
        for i, p in enumerate(players):
            if mask >> i & 1:
                continue
            scores[p] += coeff[len(coalition)] * (u(coalition | {p}) - value)
    return ContributionScores(
        scores=scores,
        evaluations=u.evaluations,
        method="exact-shapley",
        utility_all=u(frozenset(players)),
        utility_empty=u(frozenset()),
    )


def gtg_shapley(
    utility: Utility,
    *,
    clients: Iterable[int],
    seed: int,
    round_tolerance: float = 1e-3,
    truncation_tolerance: float = 1e-3,
    convergence_tolerance: float = 0.05,
    convergence_window: int = 3,
    max_cycles: int = 50,
) -> ContributionScores:
    """Monte-Carlo Shapley values with GTG-Shapley's truncations and guided sampling.

    1. **Between-round truncation**: if ``|u(N) − u(∅)| < round_tolerance``
       the round changed nothing worth sharing; every score is 0 and only
       ``u(N)`` and ``u(∅)`` are evaluated (``round_truncated=True``).
    2. **Guided sampling**: permutation ``t`` puts client ``t mod n`` (in
       sorted id order) first and shuffles the others, so within every cycle
       of ``n`` permutations each client is first exactly once (each client's
       standalone value ``u({k}) − u(∅)`` is always measured).
    3. **Within-round truncation**: along a permutation, once the running
       coalition's utility is within ``truncation_tolerance`` of ``u(N)``,
       the remaining clients' marginal gains are taken as 0 without
       evaluating them.
    4. **Convergence**: at the end of every cycle (from the second one on)
       take the L1 change of the running estimate over that cycle, relative
       to ``max(‖φ‖₁, |u(N) − u(∅)|)``. Stop when it has been below
       ``convergence_tolerance`` for ``convergence_window`` consecutive
       cycles (one calm cycle is often luck: with a single cycle, estimates
       stopped after two cycles with a fifth of the total value misplaced);
       otherwise stop after ``max_cycles`` cycles (``converged=False``).

    Coalition utilities are memoised, so no coalition is evaluated twice; with
    few clients the cost is bounded by ``2**n`` evaluations.

    Parameters
    ----------
    utility : Utility
        Value of a coalition.
    clients : iterable of int
        The round's participants.
    seed : int
        Seeds the NumPy generator that shuffles permutations. Sampling
        permutations is not a secret, so a reproducible generator is right here.
    round_tolerance : float, default 1e-3
        Between-round truncation threshold, in utility units (>= 0).
    truncation_tolerance : float, default 1e-3
        Within-round truncation threshold, in utility units (>= 0; 0 disables).
    convergence_tolerance : float, default 0.05
        Relative change of the estimate over one cycle below which a cycle
        counts as calm (> 0).
    convergence_window : int, default 3
        Consecutive calm cycles needed to stop (>= 1).
    max_cycles : int, default 50
        Cap on cycles, i.e. on ``max_cycles * n`` permutations (>= 1). A cap
        in whole cycles keeps every client first equally often.

    Returns
    -------
    ContributionScores
        With ``method="gtg-shapley"``.

    Examples
    --------
    >>> value = {1: 0.3, 2: 0.1}
    >>> scores = gtg_shapley(lambda s: sum(value[k] for k in s), clients=[1, 2], seed=0)
    >>> {k: round(v, 6) for k, v in scores.scores.items()}
    {1: 0.3, 2: 0.1}
    """
    players = _players(clients)
    n = len(players)
    check_gtg_options(
        round_tolerance=round_tolerance,
        truncation_tolerance=truncation_tolerance,
        convergence_tolerance=convergence_tolerance,
        convergence_window=convergence_window,
        max_cycles=max_cycles,
    )
    cap = max_cycles * n

    u = _Memo(utility)
    everyone = frozenset(players)
    u_all, u_empty = u(everyone), u(frozenset())
    if abs(u_all - u_empty) < round_tolerance:
        return ContributionScores(
            scores=dict.fromkeys(players, 0.0),
            evaluations=u.evaluations,
            method="gtg-shapley",
            utility_all=u_all,
            utility_empty=u_empty,
            round_truncated=True,
        )

    rng = np.random.default_rng(seed)
    estimate = np.zeros(n)
    snapshot = np.zeros(n)
    scale = abs(u_all - u_empty)
    converged = False
    permutations = 0
    stable_cycles = 0
    while permutations < cap:
        first = permutations % n
        others = np.delete(np.arange(n), first)
        order = [first, *rng.permutation(others).tolist()]
        marginals = np.zeros(n)
        coalition: frozenset[int] = frozenset()
        previous = u_empty
        for index in order:
            if abs(u_all - previous) < truncation_tolerance:
                break  # the remaining marginal gains are taken as 0
            coalition = coalition | {players[index]}
            value = u(coalition)
            marginals[index] = value - previous
            previous = value
        permutations += 1
        estimate += (marginals - estimate) / permutations
        if permutations % n == 0:
            if permutations >= 2 * n:
                change = float(np.abs(estimate - snapshot).sum())
                small = change < convergence_tolerance * max(float(np.abs(estimate).sum()), scale)
                stable_cycles = stable_cycles + 1 if small else 0
                if stable_cycles >= convergence_window:
                    converged = True
                    break
            snapshot = estimate.copy()
    return ContributionScores(
        scores={p: float(estimate[i]) for i, p in enumerate(players)},
        evaluations=u.evaluations,
        method="gtg-shapley",
        utility_all=u_all,
        utility_empty=u_empty,
        permutations=permutations,
        converged=converged,
    )


# --------------------------------------------------------------------------- utilities


def _as_float64(update: Update, client: int) -> dict[str, NDArray[np.float64]]:
    arrays = {"": update} if isinstance(update, np.ndarray) else dict(update)
    out: dict[str, NDArray[np.float64]] = {}
    for key, array in arrays.items():
        a = np.asarray(array)
        if not np.issubdtype(a.dtype, np.number) or np.iscomplexobj(a):
            raise ValueError(
                f"update of client {client}, array {key!r}: dtype {a.dtype} is not real"
            )
        a64 = a.astype(np.float64)
        if not np.isfinite(a64).all():
            raise ValueError(f"update of client {client}, array {key!r} contains NaN or infinity")
        out[key] = a64
    return out


def update_utility(
    *,
    updates: Mapping[int, Update],
    weights: Mapping[int, float],
    evaluate: Callable[[Any], float],
) -> Utility:
    """Build the coalition utility of a FedAvg round from the clients' updates.

    ``u(S) = evaluate(Σ_{k∈S} w_k Δ_k / Σ_{k∈S} w_k)`` and
    ``u(∅) = evaluate(0)`` (the current global model unchanged). Updates and
    the aggregate handed to ``evaluate`` are float64 and have the structure
    of the updates: a flat vector, or a dict of arrays with the same keys.

    Parameters
    ----------
    updates : mapping of int to update
        Client id → update (local − global); all with the same keys and shapes.
    weights : mapping of int to float
        Client id → positive, finite aggregation weight (e.g. capped example
        counts); same ids as ``updates``.
    evaluate : callable
        Value of the global model moved by an aggregate update, e.g. its
        validation accuracy.

    Examples
    --------
    >>> u = update_utility(
    ...     updates={1: np.array([1.0]), 2: np.array([3.0])},
    ...     weights={1: 1.0, 2: 3.0},
    ...     evaluate=lambda agg: float(agg[0]),
    ... )
    >>> u(frozenset({1, 2})), u(frozenset())
    (2.5, 0.0)
    """
    if not updates:
        raise ValueError("updates must hold at least one client's update")
    if set(updates) != set(weights):
        raise ValueError(
            f"weights name clients {sorted(weights)}, updates name {sorted(updates)}; "
            "they must be the same"
        )
    for client, w in weights.items():
        if isinstance(w, bool) or not isinstance(w, int | float) or not math.isfinite(w) or w <= 0:
            raise ValueError(f"weight of client {client} must be a positive number, got {w!r}")
    flat = all(isinstance(v, np.ndarray) for v in updates.values())
    converted = {k: _as_float64(v, k) for k, v in updates.items()}
    reference_client = min(converted)
    reference = converted[reference_client]
    for client, arrays in converted.items():
        if arrays.keys() != reference.keys():
            raise ValueError(
                f"update of client {client} has arrays {sorted(arrays)}, "
                f"client {reference_client} has {sorted(reference)}"
            )
        for key, a in arrays.items():
            if a.shape != reference[key].shape:
                raise ValueError(
                    f"update of client {client}, array {key!r} has shape {a.shape}, "
                    f"client {reference_client} has {reference[key].shape}"
                )

    def utility(coalition: frozenset[int]) -> float:
        unknown = coalition - converted.keys()
        if unknown:
            raise ValueError(f"coalition names clients without an update: {sorted(unknown)}")
        members = sorted(coalition)
        total = float(sum(weights[k] for k in members))
        aggregate = {
            key: (
                sum((weights[k] / total) * converted[k][key] for k in members)
                if members
                else np.zeros_like(a)
            )
            for key, a in reference.items()
        }
        return float(evaluate(aggregate[""] if flat else aggregate))

    return utility


# --------------------------------------------------------------------------- across rounds


@dataclass(frozen=True, kw_only=True)
class ClientContribution:
    """A client's contribution summed over the rounds it was scored in."""

    total: float
    rounds: int

    @property
    def per_round(self) -> float:
        """Mean score per scored participation (``total / rounds``)."""
        return self.total / self.rounds if self.rounds else 0.0


def accumulate(rounds: Iterable[ContributionScores]) -> dict[int, ClientContribution]:
    """Sum each client's scores over rounds and count its scored participations.

    Fairness under partial participation: compare clients by
    :attr:`ClientContribution.per_round`, the mean over the rounds a client
    was actually scored in, not by the total, so a client that the sampler
    (or a dropout) left out of some rounds is not punished for it. Rounds
    skipped by between-round truncation (``round_truncated``) credit nobody
    and do not count as participations.

    Per-round scores are in utility units, and later rounds usually improve
    the model less; convert each round to :func:`reward_shares` first if every
    round should weigh the same.

    Examples
    --------
    >>> r1 = ContributionScores(scores={1: 0.2, 2: 0.1}, evaluations=3, method="x", utility_all=0)
    >>> r2 = ContributionScores(scores={1: 0.1}, evaluations=2, method="x", utility_all=0)
    >>> {k: round(v.per_round, 6) for k, v in accumulate([r1, r2]).items()}
    {1: 0.15, 2: 0.1}
    """
    totals: dict[int, float] = {}
    counts: dict[int, int] = {}
    for scored in rounds:
        if scored.round_truncated:
            continue
        for client, score in scored.scores.items():
            totals[client] = totals.get(client, 0.0) + score
            counts[client] = counts.get(client, 0) + 1
    return {k: ClientContribution(total=totals[k], rounds=counts[k]) for k in sorted(totals)}


def reward_shares(scores: Mapping[int, float]) -> dict[int, float]:
    """Turn scores into reward shares: non-negative, summing to 1.

    Negative scores (a client that made the model worse) get share 0: a
    reward pool pays out, it does not fine. The positive scores are
    normalised to sum to 1. If no score is positive, nobody earned anything
    and every share is 0 (the shares then sum to 0, not 1, and the round's
    budget stays in the pool).

    Examples
    --------
    >>> reward_shares({1: 3.0, 2: 1.0, 3: -2.0})
    {1: 0.75, 2: 0.25, 3: 0.0}
    """
    for client, score in scores.items():
        if not math.isfinite(score):
            raise ValueError(f"score of client {client} is {score}; scores must be finite")
    positive = {k: max(v, 0.0) for k, v in scores.items()}
    total = sum(positive.values())
    if total <= 0:
        return dict.fromkeys(scores, 0.0)
    return {k: v / total for k, v in positive.items()}
