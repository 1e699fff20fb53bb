"""Differential privacy, the privacy ledger and secure aggregation.

Record-level local DP (DP-SGD through Opacus, :mod:`~fedlearn.privacy.local_dp`),
user-level central and distributed DP on the aggregate
(:mod:`~fedlearn.privacy.central_dp`), and the privacy ledger that composes
every release with ``dp_accounting`` (:mod:`~fedlearn.privacy.ledger`),
kept by each data holder on its own disk (:mod:`~fedlearn.privacy.holder`).
Secure aggregation lives in :mod:`fedlearn.privacy.secure`. Names are imported
on first use (PEP 562): Opacus and dp_accounting load only when needed.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fedlearn.privacy.accounting import (
        calibrate_noise,
        calibrate_noise_multiplier,
        dpsgd_event,
        epsilon,
        gaussian_event,
        sampled_gaussian_event,
    )
    from fedlearn.privacy.clipping import clip_by_global_norm, global_norm
    from fedlearn.privacy.holder import HolderPrivacy
    from fedlearn.privacy.ledger import (
        BudgetExceeded,
        LedgerEntry,
        LedgerError,
        PrivacyBudget,
        PrivacyError,
        PrivacyLedger,
        release_event,
    )
    from fedlearn.privacy.local_dp import UnsupportedLayerError, check_dp_compatible
    from fedlearn.privacy.noise import (
        add_gaussian_noise,
        central_noise_std,
        distributed_noise_std,
        gaussian,
    )
    from fedlearn.privacy.records import RecordLedger, record_fingerprints

__all__ = [
    "BudgetExceeded",
    "HolderPrivacy",
    "LedgerEntry",
    "LedgerError",
    "PrivacyBudget",
    "PrivacyError",
    "PrivacyLedger",
    "RecordLedger",
    "UnsupportedLayerError",
    "add_gaussian_noise",
    "calibrate_noise",
    "calibrate_noise_multiplier",
    "central_noise_std",
    "check_dp_compatible",
    "clip_by_global_norm",
    "distributed_noise_std",
    "dpsgd_event",
    "epsilon",
    "gaussian",
    "gaussian_event",
    "global_norm",
    "record_fingerprints",
    "release_event",
    "sampled_gaussian_event",
]

_EXPORTS = {
    "BudgetExceeded": "fedlearn.privacy.ledger",
    "HolderPrivacy": "fedlearn.privacy.holder",
    "LedgerEntry": "fedlearn.privacy.ledger",
    "LedgerError": "fedlearn.privacy.ledger",
    "PrivacyBudget": "fedlearn.privacy.ledger",
    "PrivacyError": "fedlearn.privacy.ledger",
    "PrivacyLedger": "fedlearn.privacy.ledger",
    "RecordLedger": "fedlearn.privacy.records",
    "UnsupportedLayerError": "fedlearn.privacy.local_dp",
    "add_gaussian_noise": "fedlearn.privacy.noise",
    "calibrate_noise": "fedlearn.privacy.accounting",
    "calibrate_noise_multiplier": "fedlearn.privacy.accounting",
    "central_noise_std": "fedlearn.privacy.noise",
    "check_dp_compatible": "fedlearn.privacy.local_dp",
    "clip_by_global_norm": "fedlearn.privacy.clipping",
    "distributed_noise_std": "fedlearn.privacy.noise",
    "dpsgd_event": "fedlearn.privacy.accounting",
    "epsilon": "fedlearn.privacy.accounting",
    "gaussian": "fedlearn.privacy.noise",
    "gaussian_event": "fedlearn.privacy.accounting",
    "global_norm": "fedlearn.privacy.clipping",
    "record_fingerprints": "fedlearn.privacy.records",
    "release_event": "fedlearn.privacy.ledger",
    "sampled_gaussian_event": "fedlearn.privacy.accounting",
}


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'fedlearn.privacy' has no attribute {name!r}")
