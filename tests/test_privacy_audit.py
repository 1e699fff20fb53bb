"""Empirical privacy audit of the Gaussian sum mechanism used for aggregation.

A canary-based membership test (in the spirit of Jagielski et al., NeurIPS 2020,
and Nasr et al., IEEE S&P 2021). Two neighbouring datasets: ``D`` holds the
clipped updates of ``n`` clients, ``D'`` the same plus a canary client whose
update (norm 10·C before clipping) is clipped to norm ``C``. The mechanism
releases the sum of the clipped updates plus Gaussian noise. The adversary knows
everything but the noise and whether the canary took part: it projects the
release (minus the known sum of ``D``) onto the canary's direction and says
"canary in" above a threshold.

Any ε-DP mechanism bounds every such test: ``FNR + e^ε·FPR >= 1 − δ`` and
``FPR + e^ε·FNR >= 1 − δ``. From ``T`` trials per dataset, Clopper-Pearson
upper confidence bounds on the error rates turn an observed test into a
statistically valid lower bound on ε:

    ε_lb = max(log((1 − δ − FNR_up) / FPR_up), log((1 − δ − FPR_up) / FNR_up)).

The threshold is chosen on the first half of the trials and evaluated on the
other half, so choosing it does not bias the bound; the two one-sided bounds are
at level α/2 each (Bonferroni), so ε_lb holds with confidence 1 − α = 95%.

The real mechanism (noise ``σ·C`` on the sum, central or summed from the
clients' distributed shares) must stay below the ε our accountant claims; a
deliberately broken one (noise scaled for the mean, ``σ·C/n``, but added to
the sum) must be caught above it. Noise comes from a fixed seed so the audit is
reproducible; the mechanism is otherwise exactly the library's.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pytest
from numpy.typing import NDArray
from scipy import stats

from fedlearn.privacy.accounting import epsilon, gaussian_event
from fedlearn.privacy.clipping import clip_by_global_norm
from fedlearn.privacy.noise import central_noise_std, distributed_noise_std, gaussian

SIGMA = 1.0  # noise multiplier the system claims
CLIP = 1.0  # per-client clipping norm C
DELTA = 1e-5
CLIENTS = 20  # n honest clients in D
DIM = 4  # update dimension
TRIALS = 40_000  # releases per dataset (half to pick a threshold, half to evaluate)
ALPHA = 0.05  # 95% confidence for the lower bound
SEED = 20_240_611

Mechanism = Callable[[NDArray[np.float64], int, np.random.Generator], NDArray[np.float64]]


def _clipped(vector: NDArray[np.float64]) -> NDArray[np.float64]:
    (clipped,), _ = clip_by_global_norm([vector], CLIP)
    return clipped


def _central(total: NDArray[np.float64], _: int, rng: np.random.Generator) -> NDArray[np.float64]:
    """The real central mechanism: the aggregator adds N(0, σ²C²) to the sum."""
    std = central_noise_std(noise_multiplier=SIGMA, clipping_norm=CLIP)
    return total + gaussian((TRIALS, DIM), std, rng=rng)


def _distributed(
    total: NDArray[np.float64], participants: int, rng: np.random.Generator
) -> NDArray[np.float64]:
    """The real distributed mechanism: every participant adds its share σC/√n."""
    std = distributed_noise_std(noise_multiplier=SIGMA, clipping_norm=CLIP, num_clients=CLIENTS)
    shares = gaussian((TRIALS, participants, DIM), std, rng=rng)
    return total + shares.sum(axis=1)


def _broken_mean_noise(
    total: NDArray[np.float64], _: int, rng: np.random.Generator
) -> NDArray[np.float64]:
    """A bug: noise calibrated for the mean (σC/n) added to the sum."""
    return total + gaussian((TRIALS, DIM), SIGMA * CLIP / CLIENTS, rng=rng)


def _cp_upper(failures: int, trials: int, level: float) -> float:
    """One-sided Clopper-Pearson upper bound on a binomial rate at confidence 1 − level."""
    if failures >= trials:
        return 1.0
    return float(stats.beta.ppf(1.0 - level, failures + 1, trials - failures))


def _epsilon_lower_bound(scores_out: NDArray[np.float64], scores_in: NDArray[np.float64]) -> float:
    """ε lower bound from a threshold test: "in" when the score is above the threshold."""
    half = scores_out.size // 2
    pick_out, test_out = scores_out[:half], scores_out[half:]
    pick_in, test_in = scores_in[:half], scores_in[half:]

    def point_estimate(threshold: float) -> float:
        fpr = max(float(np.mean(pick_out > threshold)), 1.0 / half)
        fnr = max(float(np.mean(pick_in <= threshold)), 1.0 / half)
        return max(
            math.log(max(1 - DELTA - fnr, 1e-300) / fpr),
            math.log(max(1 - DELTA - fpr, 1e-300) / fnr),
        )

    candidates = np.quantile(np.concatenate([pick_out, pick_in]), np.linspace(0.0005, 0.9995, 401))
    threshold = float(max(candidates, key=point_estimate))

    n = test_out.size
    fpr_up = _cp_upper(int(np.sum(test_out > threshold)), n, ALPHA / 2)
    fnr_up = _cp_upper(int(np.sum(test_in <= threshold)), n, ALPHA / 2)
    bounds = [0.0]
    if 1 - DELTA - fnr_up > 0:
        bounds.append(math.log((1 - DELTA - fnr_up) / fpr_up))
    if 1 - DELTA - fpr_up > 0:
        bounds.append(math.log((1 - DELTA - fpr_up) / fnr_up))
    return max(bounds)


def _audit(mechanism: Mechanism) -> float:
    rng = np.random.default_rng(SEED)
    honest = np.stack([_clipped(rng.normal(size=DIM) * 3.0) for _ in range(CLIENTS)])
    raw_canary = rng.normal(size=DIM)
    canary = _clipped(raw_canary / np.linalg.norm(raw_canary) * 10.0 * CLIP)
    assert np.linalg.norm(canary) <= CLIP * (1 + 1e-12)
    direction = canary / np.linalg.norm(canary)

    base = honest.sum(axis=0)
    released_out = mechanism(base, CLIENTS, rng)  # D: the canary did not take part
    released_in = mechanism(base + canary, CLIENTS + 1, rng)  # D': it did
    scores_out = (released_out - base) @ direction
    scores_in = (released_in - base) @ direction
    return _epsilon_lower_bound(scores_out, scores_in)


@pytest.fixture(scope="module")
def claimed() -> dict[str, float]:
    event = gaussian_event(noise_multiplier=SIGMA)
    return {
        "rdp": epsilon(event, delta=DELTA, accountant="rdp"),
        "pld": epsilon(event, delta=DELTA, accountant="pld"),
    }


@pytest.mark.parametrize("mechanism", [_central, _distributed], ids=["central", "distributed"])
def test_real_mechanism_stays_below_claimed_epsilon(
    mechanism: Mechanism, claimed: dict[str, float]
) -> None:
    lower = _audit(mechanism)
    # Against the tighter (PLD) claim; the audit must not refute it.
    assert lower < claimed["pld"] <= claimed["rdp"], (lower, claimed)
    # The test has power: it detects a real, non-trivial privacy loss.
    assert lower > 0.5, lower


def test_broken_mean_scaled_noise_is_caught(claimed: dict[str, float]) -> None:
    lower = _audit(_broken_mean_noise)
    # Even the looser RDP claim is refuted with 95% confidence.
    assert lower > claimed["rdp"] + 2.0, (lower, claimed)


def test_clopper_pearson_bound_is_conservative() -> None:
    # Zero failures in n trials: the exact one-sided bound is 1 − level^(1/n).
    assert _cp_upper(0, 1000, 0.025) == pytest.approx(1 - 0.025 ** (1 / 1000))
    assert _cp_upper(10, 10, 0.025) == 1.0
    assert _cp_upper(50, 1000, 0.025) > 50 / 1000
