"""Gaussian noise for differential privacy, from one cryptographically secure generator.

The generator
-------------
:class:`GaussianSampler` is the one source of DP noise in :mod:`fedlearn.privacy`: the
ChaCha20 keystream (RFC 8439, through ``cryptography``'s OpenSSL binding) under a
256-bit key, read as 53-bit uniform integers and turned into Gaussians by Box-Muller.

* **Unkeyed** (``GaussianSampler()``, what :func:`gaussian` uses by default): the
  key is 32 bytes of operating-system entropy (``os.urandom``), so every sampler
  is a fresh, unpredictable stream.
* **Keyed** (``GaussianSampler(key)``): the same key gives the same stream, for
  releases that must be reproducible by their owner and by nobody else. A data
  holder keys it with ``HMAC-SHA256(holder secret, release key)``
  (:mod:`fedlearn.privacy.holder`): a release asked for twice gets the identical
  noise (nothing new is revealed), and without the secret the key is unknown.

Why this is cryptographically adequate: ChaCha20 is a stream cipher whose keystream
is computationally indistinguishable from uniform random bytes to anyone who does
not know the key (it is the generator behind Linux's ``getrandom`` and OpenBSD's
``arc4random``). Whoever sees released values can neither predict nor reconstruct
the noise, so cannot subtract it. The usual simulation generators do not give this:
Mersenne Twister (``torch.Generator``, ``random``) has a state recoverable from its
outputs, and NumPy's PCG64 and Philox make no claim to resist an adversary. Each
key drives one stream (nonce fixed at zero); a sampler refuses to go past the
2**32 ChaCha20 blocks (256 GiB) of one stream rather than wrap.

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
far under any δ used in practice, in float32 output as in float64 (the
radius comes from ``1 - u`` formed exactly from the 53-bit integer).

Examples
--------
>>> noise = gaussian((2, 3), 0.5)
>>> noise.shape, noise.dtype
((2, 3), dtype('float64'))
>>> key = bytes(32)  # a real key is secret: HMAC of a secret, or os.urandom
>>> bool(np.array_equal(GaussianSampler(key).normal(4, 1.0), GaussianSampler(key).normal(4, 1.0)))
True
>>> distributed_noise_std(noise_multiplier=1.0, clipping_norm=2.0, num_clients=4)
1.0
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from numbers import Integral, Real
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from numpy.typing import DTypeLike, NDArray

__all__ = [
    "GaussianSampler",
    "add_gaussian_noise",
    "central_noise_std",
    "distributed_noise_std",
    "gaussian",
]

_TWO_POW_MINUS_53 = 2.0**-53
_KEY_BYTES = 32
_STREAM_BYTES = 64 * 2**32  # ChaCha20's 32-bit block counter (RFC 8439) times 64-byte blocks
_ZEROS = bytes(1 << 16)  # the plaintext whose encryption is the keystream, 64 KiB at a time


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


class GaussianSampler:
    """Gaussian noise and uniforms from a ChaCha20 keystream (see the module docstring).

    Parameters
    ----------
    key : bytes, optional
        32-byte key. ``None`` (default) draws one from the operating system's
        entropy (``os.urandom``): an unpredictable stream, what a one-off release
        uses. A given key always yields the same stream, for releases that must be
        reproducible by whoever holds the key; the key must then be secret (e.g.
        an HMAC of a secret) and drive one release only.

    Examples
    --------
    >>> sampler = GaussianSampler()
    >>> sampler.normal((2, 2), 0.1, dtype=np.float32).dtype
    dtype('float32')
    >>> u = GaussianSampler(bytes(32)).uniform(3)
    >>> bool(np.all((0.0 <= u) & (u < 1.0)))
    True
    """

    __slots__ = ("_remaining", "_stream")

    def __init__(self, key: bytes | None = None) -> None:
        if key is None:
            key = os.urandom(_KEY_BYTES)
        if not isinstance(key, bytes):
            raise TypeError(f"key must be bytes, got {type(key).__name__}")
        if len(key) != _KEY_BYTES:
            raise ValueError(f"key must be {_KEY_BYTES} bytes, got {len(key)}")
        # A zero nonce (counter 0, nonce 0): each key drives exactly one stream.
        self._stream = Cipher(algorithms.ChaCha20(key, bytes(16)), mode=None).encryptor()
        self._remaining = _STREAM_BYTES

    def __repr__(self) -> str:
        return "GaussianSampler(<key hidden>)"

    def _take(self, count: int) -> None:
        if count > self._remaining:
            raise OverflowError("this sampler's stream is exhausted (256 GiB); use a new key")
        self._remaining -= count

    def random_bytes(self, count: int) -> bytes:
        """The next ``count`` bytes of the keystream."""
        self._take(count)
        return self._stream.update(bytes(count))

    def _fill(self, array: NDArray[np.uint64]) -> None:
        """Overwrite ``array`` (contiguous) with the next bytes of the keystream, in place."""
        view = array.data.cast("B")
        self._take(len(view))
        for start in range(0, len(view), len(_ZEROS)):
            piece = view[start : start + len(_ZEROS)]
            self._stream.update_into(_ZEROS[: len(piece)], piece)

    def seed(self) -> int:
        """A 64-bit integer from the stream, e.g. to seed a ``torch.Generator``."""
        return int.from_bytes(self.random_bytes(8), "little")

    def _uniform_53(self, count: int) -> NDArray[np.float64]:
        raw = np.frombuffer(self.random_bytes(8 * count), dtype="<u8")
        return (raw >> np.uint64(11)).astype(np.float64) * _TWO_POW_MINUS_53

    def uniform(self, shape: int | Sequence[int]) -> NDArray[np.float64]:
        """Doubles ``k / 2**53``, ``k`` uniform in ``[0, 2**53)``: uniform on ``[0, 1)``."""
        dims = _check_shape(shape)
        return self._uniform_53(math.prod(dims)).reshape(dims)

    def normal(
        self, shape: int | Sequence[int], std: float, *, dtype: DTypeLike = np.float64
    ) -> NDArray[Any]:
        """Independent ``N(0, std²)`` samples of the given shape by Box-Muller.

        Parameters
        ----------
        shape, std
            As in :func:`gaussian`.
        dtype : {numpy.float64, numpy.float32}, default numpy.float64
            Output precision, and that of the transform. Either way ``1 - u`` is
            formed exactly from the 53-bit integer and is at least ``2**-53``
            (a float32 holds it too), so the tails reach the same 8.6 standard
            deviations; float32 is several times faster and all that float32
            parameters can hold.

        Returns
        -------
        numpy.ndarray
            Array of the requested shape and dtype.
        """
        dims = _check_shape(shape)
        scale = _check_positive("std", std)
        kind = np.dtype(dtype)
        if kind not in (np.float64, np.float32):
            raise TypeError(f"dtype must be float64 or float32, got {kind}")
        count = math.prod(dims)
        pairs = (count + 1) // 2
        # Few, in-place passes: on large draws, fresh temporaries (page faults) cost
        # more than the arithmetic.
        k = np.empty(2 * pairs, dtype="<u8")
        self._fill(k)
        np.right_shift(k, np.uint64(11), out=k)  # uniform integers in [0, 2**53)
        # Radius sqrt(-2 ln(1 - u)) with 1 - u = (2**53 - k) / 2**53 in (0, 1]: finite.
        head = k[:pairs]
        np.subtract(np.uint64(1 << 53), head, out=head)
        radius = np.empty(pairs, dtype=kind)
        np.multiply(head, _TWO_POW_MINUS_53, out=radius, casting="unsafe")
        np.log(radius, out=radius)
        np.multiply(radius, -2.0, out=radius)
        np.sqrt(radius, out=radius)
        np.multiply(radius, scale, out=radius)
        out = np.empty(2 * pairs, dtype=kind)
        angle = out[pairs:]  # the angle, then its sine, in place
        np.multiply(k[pairs:], 2.0 * math.pi * _TWO_POW_MINUS_53, out=angle, casting="unsafe")
        np.cos(angle, out=out[:pairs])
        np.sin(angle, out=angle)
        np.multiply(out[:pairs], radius, out=out[:pairs])
        np.multiply(angle, radius, out=angle)
        return out[:count].reshape(dims)


def gaussian(
    shape: int | Sequence[int],
    std: float,
    *,
    rng: np.random.Generator | GaussianSampler | None = None,
) -> NDArray[np.float64]:
    """Independent ``N(0, std²)`` samples of the given shape.

    Parameters
    ----------
    shape : int or sequence of int
        Output shape; ``()`` gives a 0-d array and a zero dimension an empty one.
    std : float
        Standard deviation; > 0 and finite.
    rng : GaussianSampler or numpy.random.Generator, optional
        Source of randomness. ``None`` (default) uses a fresh, unkeyed
        :class:`GaussianSampler` (OS entropy), which is what a real release must
        use; a keyed :class:`GaussianSampler` gives a reproducible, still
        cryptographically secure release. A seeded NumPy ``Generator`` is for
        tests and reproducible simulations only: it is *not* cryptographically
        secure, and an adversary who learns or guesses its seed can subtract
        the noise.

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
    if rng is None or isinstance(rng, GaussianSampler):
        return (rng or GaussianSampler()).normal(dims, scale)
    if not isinstance(rng, np.random.Generator):
        raise TypeError(
            f"rng must be a GaussianSampler or a numpy.random.Generator, got {type(rng).__name__}"
        )
    return np.asarray(rng.standard_normal(dims) * scale)


def add_gaussian_noise(
    arrays: Sequence[NDArray[Any]],
    *,
    std: float,
    rng: np.random.Generator | GaussianSampler | None = None,
) -> list[NDArray[Any]]:
    """New arrays equal to ``arrays`` plus independent ``N(0, std²)`` noise, dtypes kept.

    Parameters
    ----------
    arrays : sequence of numpy.ndarray
        Real floating-point arrays (e.g. a clipped update or an aggregate);
        never modified.
    std : float
        Standard deviation of the noise per coordinate; > 0 and finite.
    rng : GaussianSampler or numpy.random.Generator, optional
        As in :func:`gaussian`; ``None`` uses a fresh :class:`GaussianSampler`
        (one key for all the arrays).

    Returns
    -------
    list of numpy.ndarray
        Noised copies with the input shapes and dtypes (noise is added in
        float64, then rounded to the array's dtype).
    """
    source = GaussianSampler() if rng is None else rng
    out: list[NDArray[Any]] = []
    for index, array in enumerate(arrays):
        a = np.asarray(array)
        if not np.issubdtype(a.dtype, np.floating):
            raise TypeError(f"arrays[{index}] has dtype {a.dtype}; expected floating point")
        noised = a.astype(np.float64) + gaussian(a.shape, std, rng=source)
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
