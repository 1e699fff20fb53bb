"""Privacy accounting: mechanisms as ``dp_accounting`` events, ε from its accountants.

Every privacy-relevant release is described as a Google ``dp_accounting``
:class:`~dp_accounting.DpEvent` and its ε is computed by one of that library's
accountants (Rényi DP or privacy-loss distributions). This module does no ε
arithmetic of its own: it builds events, picks the accountant and neighbouring
relation that match how the data were sampled, and calibrates noise with the
library's ``mechanism_calibration.calibrate_dp_mechanism``.

Conventions
-----------
The *noise multiplier* ``σ`` is the standard deviation of the Gaussian noise
divided by the clipping norm ``C`` (the convention of Opacus and of Flower's DP
wrappers): a release of a sum of contributions, each of L2 norm at most ``C``,
with noise ``N(0, σ²C²)`` per coordinate.

* ``poisson`` sampling (each record or client is included independently with
  probability ``q``): add-or-remove-one neighbouring relation, accounted with
  :class:`~dp_accounting.PoissonSampledDpEvent`. This is the relation of
  DP-SGD in Opacus and of DP-FedAvg (McMahan et al., ICLR 2018).
* ``fixed`` sampling (exactly ``m`` of ``N`` clients, uniformly without
  replacement): the population size is public and neighbouring datasets
  replace one client, accounted with
  :class:`~dp_accounting.SampledWithoutReplacementDpEvent` under the
  replace-one relation (Wang, Balle & Kasiviswanathan, AISTATS 2019, Thm 27;
  only the RDP accountant supports it). Replacing one update by another moves
  the sum by up to ``2C``, so the event carries the multiplier ``σ / 2``.

Examples
--------
>>> event = dpsgd_event(noise_multiplier=1.5, sample_rate=0.04, steps=2250)
>>> round(epsilon(event, delta=1e-5), 2)
7.33
"""

from __future__ import annotations

import math
from collections.abc import Callable
from numbers import Integral, Real
from typing import Literal

import dp_accounting
from dp_accounting import mechanism_calibration
from dp_accounting.pld import PLDAccountant
from dp_accounting.rdp import RdpAccountant

from fedlearn.config import ACCOUNTANTS, AccountantName

__all__ = [
    "DEFAULT_MAX_NOISE_MULTIPLIER",
    "RDP_ORDERS",
    "AccountantName",
    "Sampling",
    "calibrate_noise",
    "calibrate_noise_multiplier",
    "dpsgd_event",
    "epsilon",
    "gaussian_event",
    "make_accountant",
    "sampled_gaussian_event",
]

Sampling = Literal["poisson", "fixed"]
"""How participants are drawn each step: independently (Poisson) or a fixed-size subset."""

DEFAULT_MAX_NOISE_MULTIPLIER = 1e4
"""Largest noise multiplier :func:`calibrate_noise` searches before giving up."""

_MIN_NOISE_MULTIPLIER = 1e-3
_SAMPLINGS = ("poisson", "fixed")
_NeighborRel = dp_accounting.NeighboringRelation


# --------------------------------------------------------------------------- validation


#: Integer Rényi orders. dp_accounting's defaults add fractional orders whose
#: series converge slowly (and fail to, logging warnings, at large sampling
#: rates): integer orders make each ε about 10x faster to compute, which stateless
#: clients need every round, and lose < 1e-3 in ε on the golden case
#: (σ=1.5, q=0.04, 2250 steps, δ=1e-5: 7.3299 vs 7.3293).
RDP_ORDERS: tuple[float, ...] = (*range(2, 65), 80, 96, 128, 256, 512)


def _check_real(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"{name} must be a real number, got {value!r}")
    result = float(value)
    if not math.isfinite(result):
        raise ValueError(f"{name} must be finite, got {value!r}")
    return result


def _check_positive(name: str, value: object) -> float:
    result = _check_real(name, value)
    if result <= 0:
        raise ValueError(f"{name} must be > 0, got {value!r}")
    return result


def _check_int(name: str, value: object, *, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise TypeError(f"{name} must be an integer, got {value!r}")
    result = int(value)
    if result < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {result}")
    return result


def _check_delta(delta: object) -> float:
    result = _check_real("delta", delta)
    if not 0.0 < result < 1.0:
        raise ValueError(f"delta must be in (0, 1), got {delta!r}")
    return result


def _check_sample_rate(sample_rate: object) -> float:
    result = _check_real("sample_rate", sample_rate)
    if not 0.0 < result <= 1.0:
        raise ValueError(f"sample_rate must be in (0, 1], got {sample_rate!r}")
    return result


def _check_accountant(accountant: object) -> AccountantName:
    if accountant == "rdp":
        return "rdp"
    if accountant == "pld":
        return "pld"
    raise ValueError(f"accountant must be one of {list(ACCOUNTANTS)}, got {accountant!r}")


# --------------------------------------------------------------------------- events


def gaussian_event(*, noise_multiplier: float, steps: int = 1) -> dp_accounting.DpEvent:
    """Gaussian mechanism applied ``steps`` times to the whole dataset (no sampling).

    Parameters
    ----------
    noise_multiplier : float
        Noise standard deviation divided by the clipping norm; > 0.
    steps : int, default 1
        Number of (adaptively) composed releases; >= 1.

    Returns
    -------
    dp_accounting.DpEvent
        ``SelfComposedDpEvent(GaussianDpEvent(σ), steps)`` (add-or-remove-one relation).
    """
    sigma = _check_positive("noise_multiplier", noise_multiplier)
    count = _check_int("steps", steps, minimum=1)
    return dp_accounting.SelfComposedDpEvent(dp_accounting.GaussianDpEvent(sigma), count)


def dpsgd_event(
    *, noise_multiplier: float, sample_rate: float, steps: int
) -> dp_accounting.DpEvent:
    """DP-SGD: ``steps`` Poisson-sampled Gaussian steps (Abadi et al. 2016; Opacus).

    Parameters
    ----------
    noise_multiplier : float
        Noise standard deviation divided by the per-sample clipping norm; > 0.
    sample_rate : float
        Poisson sampling probability ``q`` of each record per step; in (0, 1].
    steps : int
        Number of noisy gradient steps; >= 1.

    Returns
    -------
    dp_accounting.DpEvent
        ``SelfComposedDpEvent(PoissonSampledDpEvent(q, GaussianDpEvent(σ)), steps)``.

    Examples
    --------
    >>> event = dpsgd_event(noise_multiplier=1.1, sample_rate=0.01, steps=100)
    >>> event.count
    100
    """
    sigma = _check_positive("noise_multiplier", noise_multiplier)
    q = _check_sample_rate(sample_rate)
    count = _check_int("steps", steps, minimum=1)
    return dp_accounting.SelfComposedDpEvent(
        dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(sigma)), count
    )


def sampled_gaussian_event(
    *,
    noise_multiplier: float,
    steps: int,
    sampling: Sampling,
    sample_rate: float | None = None,
    population_size: int | None = None,
    sample_size: int | None = None,
) -> dp_accounting.DpEvent:
    """User-level central DP: Gaussian noise on the sum of sampled clients' clipped updates.

    Parameters
    ----------
    noise_multiplier : float
        Standard deviation of the noise on the *sum* divided by the per-client
        clipping norm ``C``; > 0.
    steps : int
        Number of rounds; >= 1.
    sampling : {"poisson", "fixed"}
        ``"poisson"``: each client takes part in a round independently with
        probability ``sample_rate`` (add-or-remove-one relation, both
        accountants). ``"fixed"``: exactly ``sample_size`` of
        ``population_size`` clients, uniformly without replacement (replace-one
        relation, RDP accountant only).
    sample_rate : float, optional
        Required for ``"poisson"``; in (0, 1]. For ``"fixed"`` it may be given
        only if it equals ``sample_size / population_size``.
    population_size : int, optional
        Number of clients sampled from; required for ``"fixed"``.
    sample_size : int, optional
        Clients per round, ``1 <= sample_size <= population_size``; required
        for ``"fixed"``.

    Returns
    -------
    dp_accounting.DpEvent
        Poisson: ``SelfComposed(PoissonSampled(q, Gaussian(σ)), steps)``.
        Fixed: ``SelfComposed(SampledWithoutReplacement(N, m, Gaussian(σ / 2)), steps)``;
        the halved multiplier is the replace-one sensitivity ``2C`` of the sum,
        which the RDP bound for sampling without replacement expects.

    Notes
    -----
    Flower's ``DifferentialPrivacy*FixedClipping`` wrappers sample a fixed
    number of clients per round; account for them with ``"fixed"``. Accounting a
    fixed-size sample as if it were Poisson at rate ``m / N`` is a common but
    unproven shortcut that this function does not take.

    Examples
    --------
    >>> ev = sampled_gaussian_event(
    ...     noise_multiplier=1.0, steps=50, sampling="fixed", population_size=100, sample_size=10
    ... )
    >>> ev.event.sample_size
    10
    """
    sigma = _check_positive("noise_multiplier", noise_multiplier)
    count = _check_int("steps", steps, minimum=1)
    if sampling == "poisson":
        if sample_rate is None:
            raise ValueError("sampling='poisson' needs sample_rate")
        if population_size is not None or sample_size is not None:
            raise ValueError(
                "population_size and sample_size describe sampling='fixed'; "
                "Poisson sampling is described by sample_rate alone"
            )
        return dpsgd_event(noise_multiplier=sigma, sample_rate=sample_rate, steps=count)
    if sampling == "fixed":
        if population_size is None or sample_size is None:
            raise ValueError("sampling='fixed' needs population_size and sample_size")
        n = _check_int("population_size", population_size, minimum=1)
        m = _check_int("sample_size", sample_size, minimum=1)
        if m > n:
            raise ValueError(f"sample_size ({m}) must be <= population_size ({n})")
        if sample_rate is not None and _check_sample_rate(sample_rate) != m / n:
            raise ValueError(
                f"sample_rate ({sample_rate}) contradicts sample_size / population_size "
                f"({m}/{n} = {m / n})"
            )
        return dp_accounting.SelfComposedDpEvent(
            dp_accounting.SampledWithoutReplacementDpEvent(
                n, m, dp_accounting.GaussianDpEvent(sigma / 2.0)
            ),
            count,
        )
    raise ValueError(f"sampling must be one of {list(_SAMPLINGS)}, got {sampling!r}")


# --------------------------------------------------------------------------- accountants


def _sampling_kinds(event: dp_accounting.DpEvent) -> set[str]:
    """The sampling schemes an event uses: ``"without_replacement"`` or ``"other"``."""
    if isinstance(event, dp_accounting.SelfComposedDpEvent):
        return _sampling_kinds(event.event)
    if isinstance(event, dp_accounting.ComposedDpEvent):
        kinds: set[str] = set()
        for sub in event.events:
            kinds |= _sampling_kinds(sub)
        return kinds
    if isinstance(event, dp_accounting.SampledWithoutReplacementDpEvent):
        return {"without_replacement"}
    if isinstance(event, dp_accounting.NoOpDpEvent):
        return set()
    return {"other"}


def _relation(event: dp_accounting.DpEvent) -> dp_accounting.NeighboringRelation:
    kinds = _sampling_kinds(event)
    if kinds == {"without_replacement"}:
        return _NeighborRel.REPLACE_ONE
    if "without_replacement" in kinds:
        raise ValueError(
            "the event mixes fixed-size sampling (replace-one relation) with other "
            "mechanisms (add-or-remove-one relation); they cannot be composed into one ε"
        )
    return _NeighborRel.ADD_OR_REMOVE_ONE


def make_accountant(
    event: dp_accounting.DpEvent, *, accountant: AccountantName = "rdp"
) -> dp_accounting.PrivacyAccountant:
    """A fresh ``dp_accounting`` accountant able to account for ``event``.

    The neighbouring relation follows from the event: replace-one when it is
    built from fixed-size sampling without replacement, add-or-remove-one
    otherwise.

    Parameters
    ----------
    event : dp_accounting.DpEvent
        The release (or a representative of the releases) to account for.
    accountant : {"rdp", "pld"}, default "rdp"
        Which accountant to use.

    Returns
    -------
    dp_accounting.PrivacyAccountant
        An empty accountant; nothing has been composed into it yet.

    Raises
    ------
    ValueError
        If the accountant does not support the event (it fails closed rather
        than guessing), or the event mixes neighbouring relations.
    """
    if not isinstance(event, dp_accounting.DpEvent):
        raise TypeError(f"event must be a dp_accounting.DpEvent, got {type(event).__name__}")
    name = _check_accountant(accountant)
    relation = _relation(event)
    result: dp_accounting.PrivacyAccountant
    if name == "rdp":
        result = RdpAccountant(orders=RDP_ORDERS, neighboring_relation=relation)
    else:
        result = PLDAccountant(neighboring_relation=relation)
    if not result.supports(event):
        hint = " (fixed-size sampling needs accountant='rdp')" if name == "pld" else ""
        raise ValueError(f"the {name!r} accountant does not support {event!r}{hint}")
    return result


def epsilon(
    event: dp_accounting.DpEvent, *, delta: float, accountant: AccountantName = "rdp"
) -> float:
    """ε of ``event`` at ``delta``, as computed by a ``dp_accounting`` accountant.

    Parameters
    ----------
    event : dp_accounting.DpEvent
        The (possibly composed) release.
    delta : float
        Target δ; in (0, 1).
    accountant : {"rdp", "pld"}, default "rdp"
        ``"rdp"`` is fast and a valid upper bound; ``"pld"`` is tighter (and a
        pessimistic estimate, hence also an upper bound) but slower.

    Returns
    -------
    float
        The ε such that the release is (ε, δ)-DP; may be ``inf``.

    Examples
    --------
    >>> round(epsilon(gaussian_event(noise_multiplier=1.0), delta=1e-5, accountant="pld"), 2)
    4.38
    """
    d = _check_delta(delta)
    acct = make_accountant(event, accountant=accountant)
    acct.compose(event)
    return float(acct.get_epsilon(d))


# --------------------------------------------------------------------------- calibration


class _CalibrationAccountant(dp_accounting.PrivacyAccountant):  # type: ignore[misc]
    """What ``calibrate_dp_mechanism`` composes into: ε from :func:`epsilon`, memoized.

    ``calibrate_dp_mechanism`` asks a fresh accountant for the ε of one event per
    candidate σ. This one answers from ``epsilon_of`` (one of our ``make_accountant``
    accountants, with a nan read as ``inf``): the library's search then sees the very
    values the bracket was built from (no ε is computed twice), and a nan counts as
    too little noise instead of passing its ``ε - target <= 0`` test (nan compares
    false), so the search fails closed.
    """

    def __init__(
        self,
        *,
        relation: dp_accounting.NeighboringRelation,
        accountant: AccountantName,
        epsilon_of: Callable[[dp_accounting.DpEvent, float], float],
    ) -> None:
        super().__init__(relation)
        self._accountant = accountant
        self._epsilon_of = epsilon_of

    def _maybe_compose(
        self, event: dp_accounting.DpEvent, count: int, do_compose: bool
    ) -> dp_accounting.PrivacyAccountant.CompositionErrorDetails | None:
        if not do_compose:  # the support check; composing is the base class's ledger
            try:
                make_accountant(event, accountant=self._accountant)
            except ValueError as exc:
                return self.CompositionErrorDetails(invalid_event=event, error_message=str(exc))
        return None

    def get_epsilon(self, target_delta: float) -> float:
        return self._epsilon_of(self.ledger, target_delta)


def calibrate_noise(
    make_event: Callable[[float], dp_accounting.DpEvent],
    *,
    target_epsilon: float,
    delta: float,
    accountant: AccountantName = "rdp",
    tolerance: float = 1e-3,
    max_noise_multiplier: float = DEFAULT_MAX_NOISE_MULTIPLIER,
) -> float:
    """Noise multiplier whose event just meets ``target_epsilon``, never exceeding it.

    Two steps. First a bracket ``lo < hi`` with ``ε(lo) > target >= ε(hi)`` is
    found by geometric steps on ``σ`` within ``[1e-3, max_noise_multiplier]``.
    Then ``dp_accounting``'s
    :func:`~dp_accounting.mechanism_calibration.calibrate_dp_mechanism` (Brent's
    method, then its own check that the returned σ's ε is ``<= target``, with a
    bisection fallback) finds σ in that bracket. Only a σ whose ε was computed
    and found ``<= target`` is ever returned, so the result never overshoots
    the target, even where the accountant's ε is not perfectly monotone in σ.

    Parameters
    ----------
    make_event : callable
        Maps a noise multiplier to the event to account for, e.g.
        ``lambda s: sampled_gaussian_event(noise_multiplier=s, ...)``.
    target_epsilon : float
        Target ε; > 0.
    delta : float
        Target δ; in (0, 1).
    accountant : {"rdp", "pld"}, default "rdp"
        Accountant used for every evaluation.
    tolerance : float, default 1e-3
        Relative: the search aims at ``target·(1 − tolerance) <= ε <= target``.
    max_noise_multiplier : float, default 1e4
        Give up (``ValueError``) if even this much noise overspends the target.

    Returns
    -------
    float
        ``σ`` with ``ε(σ) <= target_epsilon`` (always) and, unless the
        accountant's ε jumps by more than the tolerance (PLD discretisation) or
        the target is reached already at ``σ = 1e-3``, ``ε(σ) >= target·(1 − tolerance)``.

    Raises
    ------
    ValueError
        If the target is unreachable with ``σ <= max_noise_multiplier``, or a
        parameter is out of range.

    Examples
    --------
    >>> make = lambda s: gaussian_event(noise_multiplier=s, steps=10)
    >>> sigma = calibrate_noise(make, target_epsilon=2.0, delta=1e-5)
    >>> 0.999 * 2.0 <= epsilon(make(sigma), delta=1e-5) <= 2.0
    True
    """
    target = _check_positive("target_epsilon", target_epsilon)
    d = _check_delta(delta)
    name = _check_accountant(accountant)
    tol = _check_real("tolerance", tolerance)
    if not 0.0 < tol < 1.0:
        raise ValueError(f"tolerance must be in (0, 1), got {tolerance!r}")
    sigma_max = _check_positive("max_noise_multiplier", max_noise_multiplier)
    floor = target * (1.0 - tol)
    seen: dict[tuple[dp_accounting.DpEvent, float], float] = {}

    def epsilon_of(event: dp_accounting.DpEvent, at_delta: float) -> float:
        if (event, at_delta) not in seen:
            value = epsilon(event, delta=at_delta, accountant=name)
            seen[event, at_delta] = math.inf if math.isnan(value) else value  # fail closed
        return seen[event, at_delta]

    def eps(sigma: float) -> float:
        return epsilon_of(make_event(sigma), d)

    # 1. Bracket: lo (too little noise) < hi (enough noise). Ours, not the library's
    # LowerEndpointAndGuess search: that one starts at σ = 0 (infinite ε) and doubles
    # its step up to 2**30 times, so it can neither stop at max_noise_multiplier with
    # this error nor keep σ >= 1e-3; steps scaled by ε(σ)/target land near the
    # target in few accountant calls.
    hi = min(1.0, sigma_max)
    e_hi = eps(hi)
    lo, e_lo = 0.0, math.inf
    if e_hi > target:
        while e_hi > target:
            if hi >= sigma_max:
                raise ValueError(
                    f"target_epsilon={target} is unreachable at delta={d} with a noise "
                    f"multiplier <= {sigma_max} (ε there is {e_hi:.6g}); raise the target, "
                    "lower the sampling rate or the number of steps"
                )
            lo, e_lo = hi, e_hi
            # ε falls like 1/σ or faster, so growing σ by the ratio lands near the target.
            ratio = e_hi / target if math.isfinite(e_hi) else math.inf
            hi = min(hi * min(max(1.1 * ratio, 1.5), 1e3), sigma_max)
            e_hi = eps(hi)
    else:
        while e_hi < floor:
            if hi <= _MIN_NOISE_MULTIPLIER:
                return hi  # The target allows (almost) no noise; hi is still within it.
            shrink = min(max(e_hi / target / 1.1, 1e-3), 0.9)
            candidate = max(hi * shrink, _MIN_NOISE_MULTIPLIER)
            e_candidate = eps(candidate)
            if e_candidate > target:
                lo, e_lo = candidate, e_candidate
                break
            hi, e_hi = candidate, e_candidate
    if e_hi >= floor:
        return hi

    # 2. Root in the bracket: dp_accounting's calibration. Its tolerance is absolute
    # in σ, ours relative in ε: with ε locally like σ**-k (k estimated from the
    # bracket), a σ within tol of the root (the library may step one tol further to
    # land on the safe side) is within tolerance / 2 of the target's ε.
    steep = math.isfinite(e_lo) and e_hi > 0.0
    k = math.log(e_lo / e_hi) / math.log(hi / lo) if steep else 2.0
    relation = make_accountant(make_event(hi), accountant=name).neighboring_relation
    found = mechanism_calibration.calibrate_dp_mechanism(
        lambda: _CalibrationAccountant(relation=relation, accountant=name, epsilon_of=epsilon_of),
        make_event,
        target,
        d,
        bracket_interval=mechanism_calibration.ExplicitBracketInterval(lo, hi),
        tol=tol * lo / (4.0 * max(k, 1.0)),
    )
    sigma = float(found)
    # Defence in depth: the library returns only a σ it found within the target;
    # should a future version not, the bracket's safe end is still an answer.
    return sigma if eps(sigma) <= target else hi


def calibrate_noise_multiplier(
    *,
    target_epsilon: float,
    delta: float,
    sample_rate: float,
    steps: int,
    accountant: AccountantName = "rdp",
    tolerance: float = 1e-3,
    max_noise_multiplier: float = DEFAULT_MAX_NOISE_MULTIPLIER,
) -> float:
    """Noise multiplier for ``steps`` Poisson-sampled Gaussian steps to meet ``target_epsilon``.

    Used for DP-SGD (record-level, per client) and for central DP with Poisson
    client sampling (user-level). For fixed-size client sampling use
    :func:`calibrate_noise` with :func:`sampled_gaussian_event`.

    Parameters
    ----------
    target_epsilon : float
        Target ε over all ``steps``; > 0.
    delta : float
        Target δ; in (0, 1).
    sample_rate : float
        Poisson sampling probability per step; in (0, 1].
    steps : int
        Number of steps (or rounds); >= 1.
    accountant : {"rdp", "pld"}, default "rdp"
        Accountant used for every evaluation.
    tolerance : float, default 1e-3
        Relative: the result satisfies ``target·(1 − tolerance) <= ε <= target``.
    max_noise_multiplier : float, default 1e4
        Largest σ tried; a target that needs more is refused with ``ValueError``.

    Returns
    -------
    float
        The noise multiplier ``σ``; ``ε(σ) <= target_epsilon`` always.

    Examples
    --------
    >>> sigma = calibrate_noise_multiplier(
    ...     target_epsilon=3.0, delta=1e-5, sample_rate=0.01, steps=1000
    ... )
    >>> 0.997 * 3.0 <= epsilon(
    ...     dpsgd_event(noise_multiplier=sigma, sample_rate=0.01, steps=1000), delta=1e-5
    ... ) <= 3.0
    True
    """
    q = _check_sample_rate(sample_rate)
    count = _check_int("steps", steps, minimum=1)
    return calibrate_noise(
        lambda sigma: dpsgd_event(noise_multiplier=sigma, sample_rate=q, steps=count),
        target_epsilon=target_epsilon,
        delta=delta,
        accountant=accountant,
        tolerance=tolerance,
        max_noise_multiplier=max_noise_multiplier,
    )
