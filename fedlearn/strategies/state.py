"""Export and restore a strategy's server-side optimizer state for checkpoints.

Resuming a run must give the same model as not stopping it, so a stateful
strategy's state (server momentum, adaptive moments) goes into the checkpoint
next to the model. Our own strategies implement ``state_dict`` /
``load_state_dict``; Flower's built-in optimizer strategies keep their state
in known attributes, read here.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray

__all__ = ["export_state", "import_state"]

# Attributes in which Flower's strategies (FedAvgM, FedOpt family) keep state
# that changes across rounds. ``current_arrays`` is re-set from the global model
# in ``configure_train`` and needs no saving.
_FLOWER_STATE_ATTRS = ("m_t", "v_t", "momentum_vector")


def _innermost(strategy: Any) -> Any:
    while hasattr(strategy, "strategy"):
        strategy = strategy.strategy
    return strategy


def export_state(strategy: Any) -> dict[str, NDArray[Any]]:
    """Return the strategy's cross-round state as a flat mapping of arrays."""
    inner = _innermost(strategy)
    if hasattr(inner, "state_dict"):
        return {k: np.asarray(v) for k, v in inner.state_dict().items()}
    out: dict[str, NDArray[Any]] = {}
    for attr in _FLOWER_STATE_ATTRS:
        value = getattr(inner, attr, None)
        if isinstance(value, dict):
            out.update({f"{attr}/{k}": np.asarray(v) for k, v in value.items()})
        elif isinstance(value, list):
            out.update({f"{attr}/{i}": np.asarray(v) for i, v in enumerate(value)})
    return out


def import_state(strategy: Any, state: dict[str, NDArray[Any]]) -> None:
    """Restore what :func:`export_state` returned."""
    inner = _innermost(strategy)
    if hasattr(inner, "load_state_dict"):
        inner.load_state_dict(state)
        return
    for attr in _FLOWER_STATE_ATTRS:
        items = {k.split("/", 1)[1]: v for k, v in state.items() if k.startswith(f"{attr}/")}
        if not items:
            continue
        if attr == "momentum_vector":
            setattr(inner, attr, [items[str(i)] for i in range(len(items))])
        else:
            setattr(inner, attr, items)
