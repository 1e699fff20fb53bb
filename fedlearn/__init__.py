"""fedlearn: privacy-preserving federated learning on Flower.

Names are imported on first use (PEP 562), so a process that needs one
module (a CrypTen compute party, a ClientApp) does not pay for Ray, Opacus
and the rest.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fedlearn.config import RunConfig
    from fedlearn.data import Dataset
    from fedlearn.federation import Federation
    from fedlearn.history import History, RoundRecord

__all__ = ["Dataset", "Federation", "History", "RoundRecord", "RunConfig"]
__version__ = "0.1.0"

_EXPORTS = {
    "Dataset": "fedlearn.data",
    "Federation": "fedlearn.federation",
    "History": "fedlearn.history",
    "RoundRecord": "fedlearn.history",
    "RunConfig": "fedlearn.config",
}


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'fedlearn' has no attribute {name!r}")
