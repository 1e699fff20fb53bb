"""CrypTen 0.4.1 on current torch: it imports, and fixed-point decoding is exact."""

from __future__ import annotations

import sys
from fractions import Fraction

import numpy as np
import pytest
import torch

from fedlearn.privacy.secure.crypten_compat import (
    PRECISION_BITS,
    decode_fixed_point,
    import_crypten,
)

SCALE = 1 << PRECISION_BITS


@pytest.fixture(scope="module")
def crypten():  # type: ignore[no-untyped-def]
    return import_crypten()


def _exact(values: np.ndarray) -> list[Fraction]:
    return [Fraction(int(v), SCALE) for v in values]


def test_import_works_and_is_idempotent(crypten) -> None:  # type: ignore[no-untyped-def]
    assert import_crypten() is crypten
    encoder_cls = crypten.encoder.FixedPointEncoder
    patched = encoder_cls.decode
    import_crypten()
    assert encoder_cls.decode is patched  # patched once, not wrapped twice
    assert "torch.onnx._internal.registration" in sys.modules
    # the parts secure aggregation uses are there
    assert hasattr(crypten.mpc.MPCTensor, "from_shares")
    assert crypten.cfg.encoder.precision_bits == PRECISION_BITS


def _crafted_negatives() -> np.ndarray:
    """``-k * scale + r`` with ``0 < r < k``: where CrypTen's divisor ``scale - 1`` floors wrong."""
    values = [-k * SCALE + r for k in range(2, 400, 7) for r in (1, k // 2, k - 1)]
    values += [-k * SCALE + 1 for k in (10**3, 10**5, 2**20, 2**22)]
    return np.array(values, dtype=np.int64)


def test_original_decode_is_off_on_crafted_negatives(crypten) -> None:  # type: ignore[no-untyped-def]
    values = _crafted_negatives()
    encoder = crypten.encoder.FixedPointEncoder()
    original = encoder._fedlearn_original_decode(torch.from_numpy(values)).double().numpy()
    exact = np.array([float(f) for f in _exact(values)])
    error = original - exact
    small = np.abs(exact) < SCALE - 1
    # the bug: the integer part is one too small for |x| < 2**16 (the products case),
    # and 1 + floor((k - r - 1) / (scale - 1)) too small beyond
    np.testing.assert_allclose(error[small], -1.0, atol=2e-3)
    assert np.all(error[~small] <= -1.0 + 1e-3) and np.any(error[~small] < -2)
    np.testing.assert_array_equal(decode_fixed_point(values), exact)


def test_patched_decode_is_correctly_rounded(crypten) -> None:  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(7)
    # |whole part| < 2**23, so the exact value rounds once to float32
    values = np.concatenate(
        [
            _crafted_negatives(),
            rng.integers(-(2**39), 2**39, size=20_000, dtype=np.int64),
            np.array([0, 1, -1, SCALE, -SCALE, SCALE - 1, -SCALE + 1], dtype=np.int64),
        ]
    )
    decoded = crypten.encoder.FixedPointEncoder().decode(torch.from_numpy(values))
    assert decoded.dtype == torch.float32  # CrypTen's dtype is kept
    exact = np.array([float(f) for f in _exact(values)])
    np.testing.assert_array_equal(decoded.numpy(), exact.astype(np.float32))
    original = crypten.encoder.FixedPointEncoder()._fedlearn_original_decode(
        torch.from_numpy(values)
    )
    wrong = np.abs(original.double().numpy() - exact) > 0.5
    assert wrong.sum() >= len(_crafted_negatives())  # the original misses at least those


def test_decode_fixed_point_exact_in_float64() -> None:
    rng = np.random.default_rng(11)
    values = rng.integers(-(2**52), 2**52, size=5_000, dtype=np.int64)
    decoded = decode_fixed_point(torch.from_numpy(values))
    assert decoded.dtype == np.float64
    assert [Fraction(float(d)) for d in decoded] == _exact(values)


def test_private_products_decode_exactly(crypten) -> None:  # type: ignore[no-untyped-def]
    """A fixed-point product ``a * b`` truncated to 16 bits decodes to the truncated value."""
    rng = np.random.default_rng(3)
    a = rng.integers(-(2**20), 2**20, size=50_000, dtype=np.int64)  # |a| < 16
    b = rng.integers(-(2**20), 2**20, size=50_000, dtype=np.int64)
    product = np.floor_divide(a * b, SCALE)  # what a private x private product encodes
    exact = np.array([float(f) for f in _exact(product)])
    fixed = crypten.encoder.FixedPointEncoder().decode(torch.from_numpy(product)).double()
    original = crypten.encoder.FixedPointEncoder()._fedlearn_original_decode(
        torch.from_numpy(product)
    )
    np.testing.assert_allclose(fixed.numpy(), exact, rtol=0, atol=2**-7)  # float32 of |x| < 256
    off = np.isclose(original.double().numpy() - exact, -1.0, atol=2**-7)
    assert off.any(), "the original decode should be off by 1.0 on some products"
    assert not np.isclose(fixed.numpy() - exact, -1.0, atol=2**-7).any()


@pytest.mark.parametrize("bad", [-1, 53, 1.5, True])
def test_decode_fixed_point_rejects_bad_precision(bad: object) -> None:
    with pytest.raises((ValueError, TypeError), match="precision_bits"):
        decode_fixed_point(np.zeros(2, dtype=np.int64), precision_bits=bad)  # type: ignore[arg-type]


def test_decode_fixed_point_rejects_floats() -> None:
    with pytest.raises(TypeError, match="int64"):
        decode_fixed_point(np.zeros(2, dtype=np.float64))  # type: ignore[arg-type]
