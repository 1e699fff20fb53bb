"""Clipping (property tests, every shape) and Gaussian noise (statistical tests)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from numpy.typing import NDArray
from scipy import stats

from fedlearn.privacy.clipping import clip_by_global_norm, global_norm
from fedlearn.privacy.noise import (
    GaussianSampler,
    add_gaussian_noise,
    central_noise_std,
    distributed_noise_std,
    gaussian,
)

# --------------------------------------------------------------------------- clipping

DTYPES = [np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64)]


@st.composite
def updates(draw: st.DrawFn) -> list[NDArray[Any]]:
    """Lists of 0-4 arrays of arbitrary shapes (including () and (0,)) and float dtypes."""
    count = draw(st.integers(0, 4))
    arrays = []
    for _ in range(count):
        dtype = draw(st.sampled_from(DTYPES))
        shape = draw(
            st.one_of(
                st.just(()),
                st.just((0,)),
                hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=5),
            )
        )
        elements = st.floats(-1e4, 1e4, allow_nan=False, width=8 * dtype.itemsize)
        arrays.append(draw(hnp.arrays(dtype, shape, elements=elements)))
    return arrays


def _reference_norm(arrays: list[NDArray[Any]]) -> float:
    # math.hypot is exact to within an ulp and never overflows or underflows.
    return math.hypot(*(float(x) for a in arrays for x in np.asarray(a).ravel()))


@settings(max_examples=300, deadline=None)
@given(arrays=updates(), max_norm=st.floats(1e-3, 1e3))
def test_clipped_norm_never_exceeds_bound(arrays: list[NDArray[Any]], max_norm: float) -> None:
    before = [a.copy() for a in arrays]
    clipped, norm = clip_by_global_norm(arrays, max_norm)
    # Inputs untouched; shapes and dtypes kept; new arrays.
    assert all(np.array_equal(a, b) for a, b in zip(arrays, before, strict=True))
    assert [(c.shape, c.dtype) for c in clipped] == [(a.shape, a.dtype) for a in arrays]
    assert all(
        isinstance(c, np.ndarray) and c is not a for c, a in zip(clipped, arrays, strict=True)
    )
    assert norm == pytest.approx(_reference_norm(arrays), rel=1e-9, abs=1e-300)
    assert _reference_norm(clipped) <= max_norm * (1 + 1e-6)
    if norm <= max_norm:
        assert all(np.array_equal(c, a) for c, a in zip(clipped, arrays, strict=True))
    else:
        # Same direction: one common scale factor, within a few rounding errors of the
        # coarsest dtype in the update of max_norm / norm.
        factor = max_norm / norm
        eps = max(float(np.finfo(a.dtype).eps) for a in arrays if np.any(a))
        for c, a in zip(clipped, arrays, strict=True):
            tolerance = 4 * eps * factor * np.abs(a.astype(np.float64))
            tiny = float(np.finfo(a.dtype).smallest_subnormal)
            assert np.all(
                np.abs(c.astype(np.float64) - factor * a.astype(np.float64)) <= tolerance + tiny
            )


@settings(max_examples=100, deadline=None)
@given(arrays=updates(), max_norm=st.floats(1e-3, 1e3))
def test_within_bound_is_unchanged(arrays: list[NDArray[Any]], max_norm: float) -> None:
    norm = _reference_norm(arrays)
    if norm > max_norm:
        # Rescale into the ball (in float64, then round), keeping every shape.
        arrays = [(a.astype(np.float64) * (0.5 * max_norm / norm)).astype(a.dtype) for a in arrays]
    clipped, _ = clip_by_global_norm(arrays, max_norm)
    assert all(
        np.array_equal(c, a) and c.dtype == a.dtype for c, a in zip(clipped, arrays, strict=True)
    )


def test_zero_dimensional_arrays_are_clipped() -> None:
    # Flower's helper computes the norm per array with np.linalg.norm over axes that
    # 0-d arrays do not have; ours treats a 0-d array as the scalar it is.
    clipped, norm = clip_by_global_norm([np.array(3.0), np.array(4.0, dtype=np.float32)], 1.0)
    assert norm == 5.0
    assert clipped[0].shape == () and clipped[1].dtype == np.float32
    assert float(clipped[0]) == pytest.approx(0.6)
    assert float(clipped[1]) == pytest.approx(0.8, rel=1e-6)


def test_empty_and_all_empty_updates() -> None:
    assert clip_by_global_norm([], 1.0) == ([], 0.0)
    clipped, norm = clip_by_global_norm([np.zeros((0,)), np.zeros((2, 0), dtype=np.float32)], 1.0)
    assert norm == 0.0 and [c.shape for c in clipped] == [(0,), (2, 0)]
    clipped, norm = clip_by_global_norm([np.zeros(0), np.array([6.0, 8.0])], 5.0)
    assert norm == 10.0 and clipped[1].tolist() == [3.0, 4.0]


def test_huge_and_tiny_values_do_not_overflow() -> None:
    clipped, norm = clip_by_global_norm([np.array([3e200, 4e200])], 1.0)
    assert norm == pytest.approx(5e200)
    assert np.allclose(clipped[0], [0.6, 0.8])
    clipped, norm = clip_by_global_norm([np.array([3e-200, 4e-200])], 1e-201)
    assert norm == pytest.approx(5e-200)
    assert global_norm(clipped) <= 1e-201


def test_float16_rounding_stays_within_bound() -> None:
    rng = np.random.default_rng(1)
    for _ in range(200):
        update = [rng.normal(size=(7, 3)).astype(np.float16), rng.normal(size=5).astype(np.float16)]
        clipped, _ = clip_by_global_norm(update, 0.3)
        assert _reference_norm(clipped) <= 0.3


@pytest.mark.parametrize("max_norm", [0.0, -1.0, math.inf, math.nan])
def test_max_norm_validation(max_norm: float) -> None:
    with pytest.raises(ValueError, match="max_norm must be > 0 and finite"):
        clip_by_global_norm([np.ones(3)], max_norm)


def test_clipping_rejects_non_finite_and_non_float() -> None:
    with pytest.raises(ValueError, match="non-finite"):
        clip_by_global_norm([np.array([1.0, np.nan])], 1.0)
    with pytest.raises(ValueError, match="non-finite"):
        clip_by_global_norm([np.array(np.inf)], 1.0)
    with pytest.raises(TypeError, match="floating-point"):
        clip_by_global_norm([np.array([1, 2, 3])], 1.0)
    with pytest.raises(TypeError, match="sequence"):
        clip_by_global_norm(np.ones(3), 1.0)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="max_norm must be a real number"):
        clip_by_global_norm([np.ones(3)], "1")  # type: ignore[arg-type]


# --------------------------------------------------------------------------- noise: API

ALPHA = 1e-6  # per statistical check: a correct sampler fails one in a million runs


def test_gaussian_shapes() -> None:
    for rng in (None, np.random.default_rng(3)):
        zero_d = gaussian((), 1.0, rng=rng)
        assert isinstance(zero_d, np.ndarray) and zero_d.shape == () and zero_d.dtype == np.float64
    assert gaussian((), 1.0).shape == ()
    assert gaussian((0,), 1.0).shape == (0,)
    assert gaussian(5, 1.0).shape == (5,)
    assert gaussian((3, 0, 2), 1.0).shape == (3, 0, 2)
    odd = gaussian((3, 3), 2.0)  # odd count: Box-Muller pairs are trimmed
    assert odd.shape == (3, 3) and odd.dtype == np.float64 and np.all(np.isfinite(odd))


@pytest.mark.parametrize("std", [0.0, -1.0, math.nan, math.inf])
def test_gaussian_std_validation(std: float) -> None:
    with pytest.raises(ValueError, match="std must be > 0 and finite"):
        gaussian(3, std)


def test_gaussian_shape_validation() -> None:
    with pytest.raises(ValueError, match="shape must be non-negative integers"):
        gaussian((2, -1), 1.0)
    with pytest.raises(ValueError, match="shape must be non-negative integers"):
        gaussian((2.5,), 1.0)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="Generator"):
        gaussian(3, 1.0, rng=np.random.RandomState(0))  # type: ignore[arg-type]


def test_explicit_rng_is_reproducible_and_default_is_not() -> None:
    a = gaussian(100, 1.0, rng=np.random.default_rng(7))
    b = gaussian(100, 1.0, rng=np.random.default_rng(7))
    assert np.array_equal(a, b)
    assert not np.array_equal(gaussian(100, 1.0), gaussian(100, 1.0))


def test_secure_uniforms_are_53_bit_grid_points() -> None:
    u = GaussianSampler().uniform(10_000)
    k = u * 2.0**53
    assert np.all(k == np.floor(k)) and np.all((u >= 0.0) & (u < 1.0))
    # The top bits are used: values spread over the whole unit interval.
    assert u.min() < 0.01 and u.max() > 0.99


def test_a_key_fixes_the_stream_and_nothing_else_does() -> None:
    key = bytes(range(32))
    a, b = GaussianSampler(key), GaussianSampler(key)
    assert np.array_equal(a.normal((3, 4), 2.0), b.normal((3, 4), 2.0))
    assert a.seed() == b.seed()  # the two streams stay in step
    assert np.array_equal(gaussian(5, 1.0, rng=a), gaussian(5, 1.0, rng=b))
    other = GaussianSampler(bytes(31) + b"\x01")
    assert not np.array_equal(GaussianSampler(key).normal(8, 1.0), other.normal(8, 1.0))
    assert not np.array_equal(GaussianSampler().normal(8, 1.0), GaussianSampler().normal(8, 1.0))
    # successive draws of one sampler continue the stream, they do not repeat it
    sampler = GaussianSampler(key)
    assert not np.array_equal(sampler.normal(8, 1.0), sampler.normal(8, 1.0))
    assert "key hidden" in repr(sampler) and key.hex() not in repr(sampler)


def test_the_stream_is_chacha20_rfc8439() -> None:
    # RFC 8439, appendix A.1, test vector #1: zero key, zero nonce, block counter 0.
    first_block = GaussianSampler(bytes(32)).random_bytes(64)
    assert first_block.hex() == (
        "76b8e0ada0f13d90405d6ae55386bd28bdd219b8a08ded1aa836efcc8b770dc7"
        "da41597c5157488d7724e03fb8d84a376a43b8f41518a11cc387b669b2ee6586"
    )


def test_every_draw_advances_the_same_stream() -> None:
    key = bytes(range(32))
    by_bytes, by_normals = GaussianSampler(key), GaussianSampler(key)
    by_bytes.random_bytes(64)
    by_normals.normal(8, 1.0)  # four Box-Muller pairs: 4 x 16 bytes
    assert by_bytes.seed() == by_normals.seed()


@pytest.mark.parametrize("key", [b"", bytes(16), bytes(33)])
def test_sampler_key_must_be_32_bytes(key: bytes) -> None:
    with pytest.raises(ValueError, match="key must be 32 bytes"):
        GaussianSampler(key)
    with pytest.raises(TypeError, match="key must be bytes"):
        GaussianSampler("0" * 32)  # type: ignore[arg-type]


def test_sampler_output_dtypes_and_validation() -> None:
    sampler = GaussianSampler()
    assert sampler.normal((2, 3), 1.0, dtype=np.float32).dtype == np.float32
    assert sampler.normal((), 1.0).shape == ()
    assert sampler.normal((0, 4), 1.0, dtype=np.float32).shape == (0, 4)
    with pytest.raises(TypeError, match="float64 or float32"):
        sampler.normal(3, 1.0, dtype=np.float16)
    with pytest.raises(ValueError, match="std must be > 0 and finite"):
        sampler.normal(3, 0.0)


def test_add_gaussian_noise_keeps_dtypes_and_inputs() -> None:
    update = [np.zeros((4, 2), dtype=np.float32), np.array(1.0)]
    before = [a.copy() for a in update]
    noised = add_gaussian_noise(update, std=0.1)
    assert [(n.shape, n.dtype) for n in noised] == [((4, 2), np.float32), ((), np.float64)]
    assert all(np.array_equal(a, b) for a, b in zip(update, before, strict=True))
    assert not np.array_equal(noised[0], update[0])
    with pytest.raises(TypeError, match="floating point"):
        add_gaussian_noise([np.zeros(3, dtype=np.int64)], std=1.0)


def test_noise_std_formulas_and_validation() -> None:
    assert central_noise_std(noise_multiplier=1.5, clipping_norm=2.0) == 3.0
    assert distributed_noise_std(noise_multiplier=1.5, clipping_norm=2.0, num_clients=9) == 1.0
    with pytest.raises(ValueError, match="num_clients must be >= 1"):
        distributed_noise_std(noise_multiplier=1.0, clipping_norm=1.0, num_clients=0)
    with pytest.raises(ValueError, match="clipping_norm must be > 0"):
        central_noise_std(noise_multiplier=1.0, clipping_norm=0.0)
    with pytest.raises(ValueError, match="noise_multiplier must be > 0"):
        distributed_noise_std(noise_multiplier=-1.0, clipping_norm=1.0, num_clients=3)


# --------------------------------------------------------------------------- noise: statistics


def _assert_variance(sample: NDArray[np.float64], variance: float) -> None:
    """Two-sided chi-square test: (n-1)·s²/σ² ~ χ²(n-1) for Gaussian samples."""
    n = sample.size
    statistic = (n - 1) * float(np.var(sample, ddof=1)) / variance
    low, high = stats.chi2.ppf([ALPHA / 2, 1 - ALPHA / 2], n - 1)
    assert low <= statistic <= high, (statistic, low, high)


def _assert_mean_zero(sample: NDArray[np.float64], variance: float) -> None:
    z = float(np.mean(sample)) / math.sqrt(variance / sample.size)
    assert abs(z) <= stats.norm.ppf(1 - ALPHA / 2), z


def test_csprng_gaussian_moments_and_shape() -> None:
    std = 0.7
    # Noise added to a zero update: what is released is the noise itself.
    sample = add_gaussian_noise([np.zeros(200_000)], std=std)[0]
    _assert_variance(sample, std**2)
    _assert_mean_zero(sample, std**2)
    # The whole distribution, not just two moments (a broken transform would fail).
    assert stats.kstest(sample / std, "norm").pvalue > ALPHA
    # Box-Muller's two outputs are independent: no correlation between the halves.
    half = sample.size // 2
    r = float(np.corrcoef(sample[:half], sample[half : 2 * half])[0, 1])
    assert abs(r) <= stats.norm.ppf(1 - ALPHA / 2) / math.sqrt(half)


def test_float32_gaussian_moments_and_distribution() -> None:
    # The DP-SGD path: float32 output, radius from 53-bit uniforms, float32 cosine and sine.
    std = 1.3
    sample = GaussianSampler().normal(200_000, std, dtype=np.float32).astype(np.float64)
    _assert_variance(sample, std**2)
    _assert_mean_zero(sample, std**2)
    assert stats.kstest(sample / std, "norm").pvalue > ALPHA


def test_distributed_noise_sums_to_central_variance() -> None:
    sigma, clip, clients, coordinates = 1.2, 0.5, 16, 20_000
    share = distributed_noise_std(noise_multiplier=sigma, clipping_norm=clip, num_clients=clients)
    total = np.sum([gaussian(coordinates, share) for _ in range(clients)], axis=0)
    target = central_noise_std(noise_multiplier=sigma, clipping_norm=clip) ** 2
    assert target == pytest.approx((sigma * clip) ** 2)
    _assert_variance(total, target)
    _assert_mean_zero(total, target)
