"""Statistics of an empirical privacy audit: an ε lower bound from a threshold test.

A canary-based membership test (in the spirit of Jagielski et al., NeurIPS 2020,
and Nasr et al., IEEE S&P 2021): a mechanism is run many times on each of two
neighbouring inputs, an adversary scores every output and says "canary in"
above a threshold. Any (ε, δ)-DP mechanism bounds every such test:
``FNR + e^ε·FPR >= 1 − δ`` and ``FPR + e^ε·FNR >= 1 − δ``. Clopper-Pearson
upper confidence bounds on the two error rates turn an observed test into a
statistically valid lower bound on ε:

    ε_lb = max(log((1 − δ − FNR_up) / FPR_up), log((1 − δ − FPR_up) / FNR_up)).

The threshold is chosen on the first half of the trials and evaluated on the
other half, so choosing it does not bias the bound; the two one-sided bounds are
at level α/2 each (Bonferroni), so ε_lb holds with confidence 1 − α.

With ``n`` evaluation trials per input the bound cannot exceed about
``log(n / −log(α/2))`` (no error at all observed; 4.9 for n = 500 at α = 5%),
which sets how many trials an audit needs to refute a claimed ε.
"""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import NDArray
from scipy import stats

__all__ = ["clopper_pearson_upper", "epsilon_lower_bound"]


def clopper_pearson_upper(failures: int, trials: int, level: float) -> float:
    """One-sided Clopper-Pearson upper bound on a binomial rate at confidence 1 − level."""
    if failures >= trials:
        return 1.0
    return float(stats.beta.ppf(1.0 - level, failures + 1, trials - failures))


def epsilon_lower_bound(
    scores_out: NDArray[np.float64],
    scores_in: NDArray[np.float64],
    *,
    delta: float,
    alpha: float = 0.05,
) -> float:
    """ε lower bound (confidence 1 − alpha) from a threshold test on the scores.

    Parameters
    ----------
    scores_out, scores_in : ndarray
        The adversary's score of every output without and with the canary, one
        per independent run of the mechanism (the same number of each).
    delta : float
        δ of the guarantee under audit.
    alpha : float, default 0.05
        1 − confidence of the bound.

    Returns
    -------
    float
        The largest ε the observed test proves (0 if it proves none).
    """
    if scores_out.size != scores_in.size or scores_out.size < 4:
        raise ValueError("need the same number (>= 4) of scores without and with the canary")
    half = scores_out.size // 2
    pick_out, test_out = scores_out[:half], scores_out[half:]
    pick_in, test_in = scores_in[:half], scores_in[half:]

    def point_estimate(threshold: float) -> float:
        fpr = max(float(np.mean(pick_out > threshold)), 1.0 / half)
        fnr = max(float(np.mean(pick_in <= threshold)), 1.0 / half)
        return max(
            math.log(max(1 - delta - fnr, 1e-300) / fpr),
            math.log(max(1 - delta - fpr, 1e-300) / fnr),
        )

    candidates = np.quantile(np.concatenate([pick_out, pick_in]), np.linspace(0.0005, 0.9995, 401))
    threshold = float(max(candidates, key=point_estimate))

    n = test_out.size
    fpr_up = clopper_pearson_upper(int(np.sum(test_out > threshold)), n, alpha / 2)
    fnr_up = clopper_pearson_upper(int(np.sum(test_in <= threshold)), n, alpha / 2)
    bounds = [0.0]
    if 1 - delta - fnr_up > 0:
        bounds.append(math.log((1 - delta - fnr_up) / fpr_up))
    if 1 - delta - fpr_up > 0:
        bounds.append(math.log((1 - delta - fpr_up) / fnr_up))
    return max(bounds)
