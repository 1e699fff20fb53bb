"""L2 clipping of a whole model update (all arrays together).

Clipping bounds each contribution's L2 norm by ``C``, which is what makes the
sensitivity of a sum ``C`` and the noise multiplier meaningful. The guarantee
is checked on the result in the arrays' own dtypes: rounding a scaled
``float16`` or ``float32`` array can push its norm a hair above ``C``, and
this module shrinks the scale until it does not.

Examples
--------
>>> import numpy as np
>>> clipped, norm = clip_by_global_norm([np.array([3.0]), np.array(4.0)], 1.0)
>>> norm
5.0
>>> [round(float(np.sum(a)), 12) for a in clipped]
[0.6, 0.8]
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from numbers import Real
from typing import Any

import numpy as np
from numpy.typing import NDArray

__all__ = ["clip_by_global_norm", "global_norm"]

_MAX_SHRINK_STEPS = 64


def _as_float_arrays(arrays: Sequence[NDArray[Any]]) -> list[NDArray[np.floating[Any]]]:
    if isinstance(arrays, np.ndarray) or not isinstance(arrays, Sequence):
        raise TypeError("arrays must be a sequence (list or tuple) of numpy arrays")
    result: list[NDArray[np.floating[Any]]] = []
    for index, array in enumerate(arrays):
        a = np.asarray(array)
        if not np.issubdtype(a.dtype, np.floating):
            raise TypeError(
                f"arrays[{index}] has dtype {a.dtype}; only real floating-point "
                "arrays can be clipped without changing their dtype"
            )
        result.append(a)
    return result


def _norm(arrays: Sequence[NDArray[np.floating[Any]]]) -> float:
    # Scale by the largest magnitude first so that squaring never overflows
    # (float64 squares overflow above ~1e154) nor underflows.
    peak = 0.0
    for a in arrays:
        if a.size:
            if not np.isfinite(a).all():
                raise ValueError("the update contains non-finite values (nan or inf)")
            peak = max(peak, float(np.max(np.abs(a))))
    if peak == 0.0:
        return 0.0
    total = math.fsum(
        float(np.sum(np.square(a.astype(np.float64) / peak))) for a in arrays if a.size
    )
    return peak * math.sqrt(total)


def global_norm(arrays: Sequence[NDArray[Any]]) -> float:
    """L2 norm of all arrays taken together, computed in float64 without overflow.

    Parameters
    ----------
    arrays : sequence of numpy.ndarray
        Floating-point arrays of any shapes, including 0-d and empty arrays.

    Returns
    -------
    float
        ``sqrt(sum of squares of every element of every array)``.

    Raises
    ------
    ValueError
        If an element is nan or infinite.
    TypeError
        If an array is not of a real floating-point dtype.
    """
    return _norm(_as_float_arrays(arrays))


def clip_by_global_norm(
    arrays: Sequence[NDArray[Any]], max_norm: float
) -> tuple[list[NDArray[Any]], float]:
    """Scale ``arrays`` jointly so that their global L2 norm is at most ``max_norm``.

    Parameters
    ----------
    arrays : sequence of numpy.ndarray
        The update, one array per parameter tensor; any shapes, including 0-d
        arrays and empty arrays; real floating-point dtypes.
    max_norm : float
        The clipping norm ``C``; > 0 and finite.

    Returns
    -------
    clipped : list of numpy.ndarray
        New arrays (the inputs are never modified) with the input shapes and
        dtypes. Unchanged copies if the norm is already ``<= max_norm``;
        otherwise scaled by a common factor ``<= max_norm / norm`` such that
        their norm, computed in float64 on the rounded result, is ``<= max_norm``.
    norm : float
        The global L2 norm of the input (before clipping).

    Raises
    ------
    ValueError
        If ``max_norm`` is not positive and finite, or the update has nan/inf.
    TypeError
        If ``arrays`` is not a sequence of real floating-point arrays.

    Examples
    --------
    >>> import numpy as np
    >>> clipped, norm = clip_by_global_norm([np.full(4, 2.0, dtype=np.float32)], 2.0)
    >>> norm, clipped[0].dtype, float(np.linalg.norm(clipped[0])) <= 2.0
    (4.0, dtype('float32'), True)
    """
    if isinstance(max_norm, bool) or not isinstance(max_norm, Real):
        raise TypeError(f"max_norm must be a real number, got {max_norm!r}")
    bound = float(max_norm)
    if not (math.isfinite(bound) and bound > 0.0):
        raise ValueError(f"max_norm must be > 0 and finite, got {max_norm!r}")
    inputs = _as_float_arrays(arrays)
    norm = _norm(inputs)
    if norm <= bound:
        return [a.copy() for a in inputs], norm
    factor = bound / norm
    # Rounding to the arrays' dtype can raise the norm by up to ~eps of the coarsest
    # dtype (float16: 1e-3). Shrink the factor by the measured overshoot, with a margin
    # that doubles on every attempt, until the rounded result is within the bound.
    margin = float(np.finfo(np.float64).eps)
    for _ in range(_MAX_SHRINK_STEPS):
        clipped = [np.asarray(a.astype(np.float64) * factor).astype(a.dtype) for a in inputs]
        clipped_norm = _norm(clipped)
        if clipped_norm <= bound:
            return clipped, norm
        factor *= (bound / clipped_norm) * (1.0 - margin)
        margin *= 2.0
    raise ArithmeticError(  # pragma: no cover - unreachable for IEEE floating point
        f"could not clip to norm {bound} in dtype(s) {sorted({str(a.dtype) for a in inputs})}"
    )
