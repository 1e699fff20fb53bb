"""Differential privacy, the privacy ledger and secure aggregation.

Record-level local DP (DP-SGD through Opacus, :mod:`~fedlearn.privacy.local_dp`),
user-level central and distributed DP on the aggregate
(:mod:`~fedlearn.privacy.central_dp`), and the privacy ledger that composes
every release with ``dp_accounting`` (:mod:`~fedlearn.privacy.ledger`),
kept by each data holder on its own disk (:mod:`~fedlearn.privacy.holder`).
"""

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

__all__ = [
    "BudgetExceeded",
    "HolderPrivacy",
    "LedgerEntry",
    "LedgerError",
    "PrivacyBudget",
    "PrivacyError",
    "PrivacyLedger",
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
    "release_event",
    "sampled_gaussian_event",
]
