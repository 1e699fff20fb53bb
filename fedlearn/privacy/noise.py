"""Gaussian noise for differential privacy, from a cryptographically secure source.

By default the noise is drawn from the operating system's CSPRNG
(:func:`secrets.token_bytes`, i.e. ``os.urandom``): 53-bit uniform doubles
transformed by Box-Muller. A NumPy ``Generator`` may be passed instead for
tests and reproducible experiments; it is *not* cryptographically secure, and an
adversary who learns or guesses its seed can subtract the noise.

Floating-point caveat
---------------------
The privacy proofs assume real-valued noise. Mironov (CCS 2012, "On
significance of the least significant bits for differential privacy") showed
that textbook floating-point samplers leave gaps in the set of representable
outputs whose pattern depends on the un-noised value, which can leak it. This
module uses 53-bit uniforms and a textbook transform, so it shares that
weakness in principle (as do Opacus, TensorFlow Privacy and Flower); the
remedies are the snapping mechanism (Mironov 2012) or discrete Gaussian noise
on a fixed-point encoding (Canonne, Kamath & Steinke 2020). In addition the
53-bit uniforms truncate the Box-Muller output at about 8.6 standard
deviations, a deviation from the ideal Gaussian with probability below 1e-16,
far under any δ used in practice.

Examples
--------
>>> import numpy as np
>>> noise = gaussian((2, 3), 0.5)
>>> noise.shape, noise.dtype
((2, 3), dtype('float64'))
>>> distributed_noise_std(noise_multiplier=1.0, clipping_norm=2.0, num_clients=4)
1.0
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Sequence
from numbers import Integral, Real
from typing import Any

import numpy as np
from numpy.typing import NDArray

__all__ = ["add_gaussian_noise", "central_noise_std", "distributed_noise_std", "gaussian"]

_TWO_POW_MINUS_53 = 2.0**-53


def _check_positive(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"{name} must be a real number, got {value!r}")
    result = float(value)
    if not (math.isfinite(result) and result > 0.0):
        raise ValueError(f"{name} must be > 0 and finite, got {value!r}")
    return result


def _check_shape(shape: int | Sequence[int]) -> tuple[int, ...]:
    raw: Sequence[object] = [shape] if isinstance(shape, int | np.integer) else list(shape)
    dims: list[int] = []
    for dim in raw:
        if isinstance(dim, bool) or not isinstance(dim, int | np.integer) or dim < 0:
            raise ValueError(f"shape must be non-negative integers, got {shape!r}")
        dims.append(int(dim))
    return tuple(dims)


def _secure_uniform_53(count: int) -> NDArray[np.float64]:
    """``count`` doubles ``k / 2**53``, ``k`` uniform in ``[0, 2**53)``, from the OS CSPRNG."""
    raw = np.frombuffer(secrets.token_bytes(8 * count), dtype=np.uint64)
    return (raw >> np.uint64(11)).astype(np.float64) * _TWO_POW_MINUS_53


def _secure_standard_normal(count: int) -> NDArray[np.float64]:
    """``count`` independent N(0, 1) samples by Box-Muller on CSPRNG uniforms."""
    pairs = (count + 1) // 2
    uniforms = _secure_uniform_53(2 * pairs)
    # 1 - u lies in (0, 1], so the logarithm is finite.
    radius = np.sqrt(-2.0 * np.log1p(-uniforms[:pairs]))
    angle = (2.0 * math.pi) * uniforms[pairs:]
    normals = np.concatenate((radius * np.cos(angle), radius * np.sin(angle)))
    return normals[:count]


def gaussian(
    shape: int | Sequence[int], std: float, *, rng: np.random.Generator | None = None
) -> NDArray[np.float64]:
    """Independent ``N(0, std²)`` samples of the given shape.

    Parameters
    ----------
    shape : int or sequence of int
        Output shape; ``()`` gives a 0-d array and a zero dimension an empty one.
    std : float
        Standard deviation; > 0 and finite.
    rng : numpy.random.Generator, optional
        Source of randomness. ``None`` (default) uses the operating system's
        cryptographically secure generator, which is what a real release must
        use. A seeded ``Generator`` is for tests and reproducible simulations
        only.

    Returns
    -------
    numpy.ndarray
        float64 array of the requested shape.

    Examples
    --------
    >>> import numpy as np
    >>> a = gaussian(3, 1.0, rng=np.random.default_rng(0))
    >>> b = gaussian(3, 1.0, rng=np.random.default_rng(0))
    >>> bool(np.array_equal(a, b))
    True
    """
    dims = _check_shape(shape)
    scale = _check_positive("std", std)
    if rng is not None:
        if not isinstance(rng, np.random.Generator):
            raise TypeError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}")
        return np.asarray(rng.standard_normal(dims) * scale)
    count = math.prod(dims)
    return (_secure_standard_normal(count) * scale).reshape(dims)


def add_gaussian_noise(
    arrays: Sequence[NDArray[Any]], *, std: float, rng: np.random.Generator | None = None
) -> list[NDArray[Any]]:
    """New arrays equal to ``arrays`` plus independent ``N(0, std²)`` noise, dtypes kept.

    Parameters
    ----------
    arrays : sequence of numpy.ndarray
        Real floating-point arrays (e.g. a clipped update or an aggregate);
        never modified.
    std : float
        Standard deviation of the noise per coordinate; > 0 and finite.
    rng : numpy.random.Generator, optional
        As in :func:`gaussian`; ``None`` uses the OS CSPRNG.

    Returns
    -------
    list of numpy.ndarray
        Noised copies with the input shapes and dtypes (noise is added in
        float64, then rounded to the array's dtype).
    """
    out: list[NDArray[Any]] = []
    for index, array in enumerate(arrays):
        a = np.asarray(array)
        if not np.issubdtype(a.dtype, np.floating):
            raise TypeError(f"arrays[{index}] has dtype {a.dtype}; expected floating point")
        noised = a.astype(np.float64) + gaussian(a.shape, std, rng=rng)
        out.append(np.asarray(noised).astype(a.dtype))
    return out


def central_noise_std(*, noise_multiplier: float, clipping_norm: float) -> float:
    """Standard deviation of the noise a trusted aggregator adds to the *sum*: ``σ·C``.

    Parameters
    ----------
    noise_multiplier : float
        ``σ``; > 0.
    clipping_norm : float
        Per-contribution L2 bound ``C``; > 0.

    Returns
    -------
    float
        ``σ·C``. To publish the mean over a fixed, public number ``m`` of
        sampled clients, divide the *noised sum* by ``m``; adding ``σ·C / m``
        to the sum instead would under-noise by a factor ``m``.
    """
    sigma = _check_positive("noise_multiplier", noise_multiplier)
    bound = _check_positive("clipping_norm", clipping_norm)
    return sigma * bound


def distributed_noise_std(
    *, noise_multiplier: float, clipping_norm: float, num_clients: int
) -> float:
    """Per-client noise std so that the sum of ``n`` clients' noise is ``N(0, σ²C²)``.

    Each client adds ``N(0, σ²C²/n)`` to its clipped update before it is
    protected (masked, encrypted or secret-shared); the sum of ``n`` such
    independent draws has variance ``σ²C²``, the variance of the central
    mechanism, while no party ever sees an un-noised update.

    Parameters
    ----------
    noise_multiplier : float
        ``σ`` the aggregate should carry; > 0.
    clipping_norm : float
        Per-client L2 bound ``C``; > 0.
    num_clients : int
        ``n``, the number of clients whose noise will be summed; >= 1. If
        clients may drop out after adding noise, use the smallest number of
        survivors the protocol accepts: with fewer summands the aggregate
        carries only ``σ²C²·(survivors / n)`` (Kairouz et al., ICML 2021).

    Returns
    -------
    float
        ``σ·C / sqrt(n)``.
    """
    sigma = _check_positive("noise_multiplier", noise_multiplier)
    bound = _check_positive("clipping_norm", clipping_norm)
    if isinstance(num_clients, bool) or not isinstance(num_clients, Integral):
        raise TypeError(f"num_clients must be an integer, got {num_clients!r}")
    if num_clients < 1:
        raise ValueError(f"num_clients must be >= 1, got {num_clients}")
    return sigma * bound / math.sqrt(int(num_clients))
