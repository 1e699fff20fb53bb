"""Accounting: golden values, cross-library agreement, calibration and validation."""

from __future__ import annotations

import math

import dp_accounting
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opacus.accountants import RDPAccountant as OpacusRDPAccountant

from fedlearn.privacy.accounting import (
    calibrate_noise,
    calibrate_noise_multiplier,
    dpsgd_event,
    epsilon,
    gaussian_event,
    make_accountant,
    sampled_gaussian_event,
)

# Golden value: DP-SGD with σ=1.5, q=0.04, 2250 steps at δ=1e-5 under RDP
# (dp_accounting 0.6.0 gives 7.32933, Opacus 1.6.0 gives 7.32911).
GOLDEN_SIGMA, GOLDEN_Q, GOLDEN_STEPS, GOLDEN_DELTA = 1.5, 0.04, 2250, 1e-5
GOLDEN_EPSILON = 7.3291


def _golden_event() -> dp_accounting.DpEvent:
    return dpsgd_event(noise_multiplier=GOLDEN_SIGMA, sample_rate=GOLDEN_Q, steps=GOLDEN_STEPS)


# --------------------------------------------------------------------------- golden values


def test_dpsgd_event_structure() -> None:
    event = _golden_event()
    assert event == dp_accounting.SelfComposedDpEvent(
        dp_accounting.PoissonSampledDpEvent(GOLDEN_Q, dp_accounting.GaussianDpEvent(GOLDEN_SIGMA)),
        GOLDEN_STEPS,
    )


def test_rdp_golden_value() -> None:
    eps = epsilon(_golden_event(), delta=GOLDEN_DELTA)
    assert eps == pytest.approx(GOLDEN_EPSILON, abs=1e-3)


def test_rdp_agrees_with_opacus() -> None:
    opacus = OpacusRDPAccountant()
    opacus.history = [(GOLDEN_SIGMA, GOLDEN_Q, GOLDEN_STEPS)]
    theirs = opacus.get_epsilon(delta=GOLDEN_DELTA)
    ours = epsilon(_golden_event(), delta=GOLDEN_DELTA, accountant="rdp")
    assert theirs == pytest.approx(GOLDEN_EPSILON, abs=1e-3)
    assert ours == pytest.approx(theirs, abs=1e-3)


def test_pld_is_tighter_than_rdp_on_golden() -> None:
    rdp = epsilon(_golden_event(), delta=GOLDEN_DELTA, accountant="rdp")
    pld = epsilon(_golden_event(), delta=GOLDEN_DELTA, accountant="pld")
    # PLD is a (pessimistic) near-exact bound; RDP's conversion loses a few percent.
    assert 0.8 * rdp < pld <= rdp


@pytest.mark.parametrize(
    ("sigma", "q", "steps", "delta"),
    [(0.8, 0.01, 100, 1e-5), (1.1, 0.1, 30, 1e-6), (3.0, 1.0, 10, 1e-5), (1.0, 0.5, 1, 1e-3)],
)
def test_pld_at_most_rdp(sigma: float, q: float, steps: int, delta: float) -> None:
    event = dpsgd_event(noise_multiplier=sigma, sample_rate=q, steps=steps)
    rdp = epsilon(event, delta=delta, accountant="rdp")
    pld = epsilon(event, delta=delta, accountant="pld")
    assert 0.0 < pld <= rdp


@pytest.mark.parametrize("sigma", [0.7, 1.0, 2.0, 5.0])
def test_single_gaussian_pld_matches_analytic_gaussian(sigma: float) -> None:
    # Exact ε of one Gaussian release (Balle & Wang 2018, in dp_accounting); the PLD
    # estimate is pessimistic, so it may only be slightly above.
    exact = dp_accounting.get_epsilon_gaussian(sigma, 1e-5)
    pld = epsilon(gaussian_event(noise_multiplier=sigma), delta=1e-5, accountant="pld")
    assert exact <= pld <= exact * 1.01 + 1e-3


def test_epsilon_decreases_with_noise_and_grows_with_steps() -> None:
    sigmas = [0.6, 0.9, 1.3, 2.0, 4.0]
    eps = [
        epsilon(dpsgd_event(noise_multiplier=s, sample_rate=0.02, steps=300), delta=1e-5)
        for s in sigmas
    ]
    assert eps == sorted(eps, reverse=True)
    by_steps = [
        epsilon(dpsgd_event(noise_multiplier=1.0, sample_rate=0.02, steps=t), delta=1e-5)
        for t in (10, 100, 1000)
    ]
    assert by_steps == sorted(by_steps)


# --------------------------------------------------------------------------- user-level sampling


def test_poisson_client_sampling_is_the_dpsgd_event() -> None:
    event = sampled_gaussian_event(
        noise_multiplier=1.2, steps=40, sampling="poisson", sample_rate=0.1
    )
    assert event == dpsgd_event(noise_multiplier=1.2, sample_rate=0.1, steps=40)


def test_fixed_sampling_uses_without_replacement_event_and_replace_one() -> None:
    event = sampled_gaussian_event(
        noise_multiplier=1.0, steps=30, sampling="fixed", population_size=100, sample_size=10
    )
    inner = event.event
    assert isinstance(event, dp_accounting.SelfComposedDpEvent) and event.count == 30
    assert isinstance(inner, dp_accounting.SampledWithoutReplacementDpEvent)
    assert (inner.source_dataset_size, inner.sample_size) == (100, 10)
    # Replace-one sensitivity of the sum is 2C: the event carries σ/2.
    assert inner.event == dp_accounting.GaussianDpEvent(0.5)
    accountant = make_accountant(event)
    assert accountant.neighboring_relation is dp_accounting.NeighboringRelation.REPLACE_ONE


def test_fixed_full_participation_equals_gaussian_with_replace_one_sensitivity() -> None:
    # Sampling all N clients is no sampling: the release is a Gaussian mechanism whose
    # sensitivity under replace-one is 2C, i.e. noise multiplier σ/2 in add/remove terms.
    sigma, steps = 3.0, 20
    fixed = sampled_gaussian_event(
        noise_multiplier=sigma, steps=steps, sampling="fixed", population_size=7, sample_size=7
    )
    plain = gaussian_event(noise_multiplier=sigma / 2, steps=steps)
    assert epsilon(fixed, delta=1e-5) == pytest.approx(epsilon(plain, delta=1e-5), rel=1e-12)


def test_fixed_sampling_amplifies_and_is_rdp_only() -> None:
    def eps(m: int) -> float:
        event = sampled_gaussian_event(
            noise_multiplier=2.0, steps=10, sampling="fixed", population_size=200, sample_size=m
        )
        return epsilon(event, delta=1e-5)

    assert eps(5) < eps(50) < eps(200)
    event = sampled_gaussian_event(
        noise_multiplier=2.0, steps=10, sampling="fixed", population_size=200, sample_size=5
    )
    with pytest.raises(ValueError, match="fixed-size sampling needs accountant='rdp'"):
        epsilon(event, delta=1e-5, accountant="pld")


def test_mixed_relations_are_refused() -> None:
    mixed = dp_accounting.ComposedDpEvent(
        [
            dpsgd_event(noise_multiplier=1.0, sample_rate=0.1, steps=2),
            sampled_gaussian_event(
                noise_multiplier=1.0, steps=2, sampling="fixed", population_size=10, sample_size=2
            ),
        ]
    )
    with pytest.raises(ValueError, match="cannot be composed"):
        epsilon(mixed, delta=1e-5)


def test_unsupported_event_fails_closed() -> None:
    with pytest.raises(ValueError, match="does not support"):
        epsilon(dp_accounting.UnsupportedDpEvent(), delta=1e-5)
    with pytest.raises(TypeError, match="DpEvent"):
        epsilon("gaussian", delta=1e-5)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"noise_multiplier": 0.0}, "noise_multiplier must be > 0"),
        ({"noise_multiplier": -1.0}, "noise_multiplier must be > 0"),
        ({"noise_multiplier": math.nan}, "noise_multiplier must be finite"),
        ({"sample_rate": 0.0}, r"sample_rate must be in \(0, 1\]"),
        ({"sample_rate": 1.5}, r"sample_rate must be in \(0, 1\]"),
        ({"steps": 0}, "steps must be >= 1"),
    ],
)
def test_event_validation(kwargs: dict[str, float], message: str) -> None:
    params: dict[str, float] = {"noise_multiplier": 1.0, "sample_rate": 0.1, "steps": 10}
    params.update(kwargs)
    with pytest.raises(ValueError, match=message):
        dpsgd_event(**params)  # type: ignore[arg-type]


def test_event_type_validation() -> None:
    with pytest.raises(TypeError, match="steps must be an integer"):
        dpsgd_event(noise_multiplier=1.0, sample_rate=0.1, steps=2.5)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="noise_multiplier must be a real number"):
        gaussian_event(noise_multiplier=True)


@pytest.mark.parametrize("delta", [0.0, 1.0, -1e-5, 2.0, math.nan])
def test_delta_must_be_in_open_unit_interval(delta: float) -> None:
    with pytest.raises(ValueError, match="delta must be"):
        epsilon(gaussian_event(noise_multiplier=1.0), delta=delta)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"sampling": "poisson"}, "needs sample_rate"),
        (
            {"sampling": "poisson", "sample_rate": 0.1, "population_size": 10},
            "describe sampling='fixed'",
        ),
        ({"sampling": "fixed", "population_size": 10}, "needs population_size and sample_size"),
        (
            {"sampling": "fixed", "population_size": 10, "sample_size": 11},
            "must be <= population_size",
        ),
        (
            {"sampling": "fixed", "population_size": 10, "sample_size": 0},
            "sample_size must be >= 1",
        ),
        (
            {"sampling": "fixed", "population_size": 10, "sample_size": 2, "sample_rate": 0.3},
            "contradicts",
        ),
        ({"sampling": "uniform", "sample_rate": 0.1}, "sampling must be one of"),
    ],
)
def test_sampled_gaussian_validation(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        sampled_gaussian_event(noise_multiplier=1.0, steps=5, **kwargs)  # type: ignore[arg-type]


def test_unknown_accountant() -> None:
    with pytest.raises(ValueError, match="accountant must be one of"):
        epsilon(gaussian_event(noise_multiplier=1.0), delta=1e-5, accountant="moments")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"target_epsilon": 0.0}, "target_epsilon must be > 0"),
        ({"target_epsilon": -1.0}, "target_epsilon must be > 0"),
        ({"delta": 0.0}, "delta must be in"),
        ({"delta": 1.0}, "delta must be in"),
        ({"sample_rate": 0.0}, "sample_rate must be in"),
        ({"steps": 0}, "steps must be >= 1"),
        ({"tolerance": 0.0}, "tolerance must be in"),
    ],
)
def test_calibration_validation(kwargs: dict[str, float], message: str) -> None:
    params: dict[str, float] = {
        "target_epsilon": 1.0,
        "delta": 1e-5,
        "sample_rate": 0.01,
        "steps": 10,
    }
    params.update(kwargs)
    with pytest.raises(ValueError, match=message):
        calibrate_noise_multiplier(**params)  # type: ignore[arg-type]


def test_unreachable_target_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match=r"unreachable .* noise multiplier <= 10000"):
        calibrate_noise_multiplier(target_epsilon=1e-4, delta=1e-7, sample_rate=1.0, steps=1000)


# --------------------------------------------------------------------------- calibration


def test_calibration_hits_golden_inverse() -> None:
    sigma = calibrate_noise_multiplier(
        target_epsilon=GOLDEN_EPSILON, delta=GOLDEN_DELTA, sample_rate=GOLDEN_Q, steps=GOLDEN_STEPS
    )
    assert sigma == pytest.approx(GOLDEN_SIGMA, rel=2e-3)
    eps = epsilon(
        dpsgd_event(noise_multiplier=sigma, sample_rate=GOLDEN_Q, steps=GOLDEN_STEPS),
        delta=GOLDEN_DELTA,
    )
    assert GOLDEN_EPSILON * (1 - 1e-3) <= eps <= GOLDEN_EPSILON


def test_calibration_with_pld() -> None:
    target = 2.0
    sigma = calibrate_noise_multiplier(
        target_epsilon=target,
        delta=1e-5,
        sample_rate=0.05,
        steps=20,
        accountant="pld",
        tolerance=1e-2,
    )
    event = dpsgd_event(noise_multiplier=sigma, sample_rate=0.05, steps=20)
    assert epsilon(event, delta=1e-5, accountant="pld") <= target
    # PLD is tighter, so it needs less noise than RDP for the same target.
    rdp_sigma = calibrate_noise_multiplier(
        target_epsilon=target, delta=1e-5, sample_rate=0.05, steps=20, tolerance=1e-2
    )
    assert sigma < rdp_sigma


def test_calibration_for_fixed_client_sampling() -> None:
    target = 4.0

    def make(sigma: float) -> dp_accounting.DpEvent:
        return sampled_gaussian_event(
            noise_multiplier=sigma, steps=20, sampling="fixed", population_size=50, sample_size=10
        )

    sigma = calibrate_noise(make, target_epsilon=target, delta=1e-5, tolerance=2e-2)
    assert target * 0.98 <= epsilon(make(sigma), delta=1e-5) <= target


@settings(
    max_examples=6,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(
    target=st.floats(0.3, 10.0),
    log_delta=st.floats(math.log(1e-7), math.log(1e-3)),
    log_q=st.floats(math.log(1e-3), math.log(0.5)),
    steps=st.integers(1, 2000),
)
def test_calibration_never_overshoots(
    target: float, log_delta: float, log_q: float, steps: int
) -> None:
    delta, q = math.exp(log_delta), math.exp(log_q)
    tolerance = 1e-3
    sigma = calibrate_noise_multiplier(
        target_epsilon=target, delta=delta, sample_rate=q, steps=steps, tolerance=tolerance
    )
    eps = epsilon(dpsgd_event(noise_multiplier=sigma, sample_rate=q, steps=steps), delta=delta)
    assert eps <= target
    assert eps >= target * (1 - tolerance)
