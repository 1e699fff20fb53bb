"""The one flat vector a client protects, and the model it stands for.

A client protects ``[w·(θ_k − θ), w]``: its model update against the global
model θ, pre-scaled by its weight ``w``, followed by the weight itself. The
sum over clients therefore carries both the weighted sum of updates and the
total weight, so the server recovers the weighted mean update by one division
and never needs any client's weight or update on its own.

Weights are ``min(n_k, max_examples) / max_examples`` for example-weighted
averaging (capping bounds what a client lying about its count can gain, and
keeps every value in ``[-|u|, |u|]`` for the fixed ranges of CKKS and
SecAgg+), or 1 for runs that average uniformly (local DP, where counts are
not released, and user-level DP, which sums clipped updates).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from numpy.typing import NDArray

__all__ = ["client_vector", "example_weight", "mean_update", "vector_length"]


def vector_length(model: Mapping[str, NDArray[Any]]) -> int:
    """Length of the protected vector for ``model``: its parameters plus the weight slot."""
    return sum(int(np.asarray(a).size) for a in model.values()) + 1


def example_weight(num_examples: float, *, max_examples: int) -> float:
    """A client's weight in ``(0, 1]`` from its (capped) example count."""
    if max_examples < 1:
        raise ValueError(f"max_examples must be >= 1, got {max_examples}")
    if not np.isfinite(num_examples) or num_examples <= 0:
        raise ValueError(f"the example count must be a positive number, got {num_examples}")
    return min(float(num_examples), float(max_examples)) / max_examples


def client_vector(
    *,
    trained: Mapping[str, NDArray[Any]],
    sent: Mapping[str, NDArray[Any]],
    weight: float,
) -> NDArray[np.float64]:
    """``[weight·(trained − sent), weight]`` flattened in the global model's key order."""
    if set(trained) != set(sent):
        raise ValueError(f"trained keys {sorted(trained)} differ from the model's {sorted(sent)}")
    if not 0 < weight <= 1:
        raise ValueError(f"weight must be in (0, 1], got {weight}")
    parts = []
    for key, reference in sent.items():
        local = np.asarray(trained[key], dtype=np.float64)
        if local.shape != np.shape(reference):
            raise ValueError(f"{key!r} has shape {local.shape}, expected {np.shape(reference)}")
        parts.append((weight * (local - np.asarray(reference, dtype=np.float64))).ravel())
    parts.append(np.array([weight]))
    vector = np.concatenate(parts)
    if not np.isfinite(vector).all():
        raise ValueError("the update contains NaN or infinity")
    return vector


def mean_update(
    total: NDArray[np.float64], *, like: Mapping[str, NDArray[Any]]
) -> dict[str, NDArray[np.float64]]:
    """The weighted mean update from a summed vector (``Σ w·u`` / ``Σ w``), shaped like ``like``."""
    expected = vector_length(like)
    if total.shape != (expected,):
        raise ValueError(f"summed vector has shape {total.shape}, expected ({expected},)")
    weight = float(total[-1])
    if not np.isfinite(total).all() or weight <= 0:
        raise ValueError(f"the revealed sum is unusable (total weight {weight})")
    out: dict[str, NDArray[np.float64]] = {}
    offset = 0
    for key, reference in like.items():
        shape = np.shape(reference)
        size = int(np.prod(shape, dtype=np.int64))
        out[key] = (total[offset : offset + size] / weight).reshape(shape)
        offset += size
    return out
