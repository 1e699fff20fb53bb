"""SecAgg+ parameters: the neighbourhood, the threshold, the quantization and the modulus.

:func:`check_parameters` validates them on the server (constructor
arguments) and on each client (the ``secagg-setup`` fields) with the same
rules: an odd neighbourhood of at least 3, a threshold above half of it, a
finite clipping range, and a modulus that at least two clients' quantized sum
cannot wrap. Nothing is clamped or rounded into range.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast

import numpy as np
from flwr.app import ConfigRecord

__all__ = ["SecAggPlusParameters", "check_parameters", "is_integer"]


@dataclass(frozen=True)
class SecAggPlusParameters:
    """One round's SecAgg+ parameters, checked (build them with :func:`check_parameters`).

    Attributes
    ----------
    num_shares : int
        Neighbourhood size ``k`` (odd, ``>= 3``, the node itself included).
    threshold : int
        Shares ``t`` that reconstruct a secret, ``k/2 < t <= k``.
    clipping_range : float
        Values lie in ``[-clipping_range, clipping_range]``.
    quantization_range : int
        Integer levels ``Q`` per value.
    modulus_bits : int
        The masked arithmetic is modulo ``2**modulus_bits``.
    stochastic_rounding : bool
        Unbiased stochastic rounding (else nearest).
    """

    num_shares: int
    threshold: int
    clipping_range: float
    quantization_range: int
    modulus_bits: int
    stochastic_rounding: bool

    @property
    def modulus(self) -> int:
        """The modulus ``M = 2**modulus_bits`` of the masked arithmetic."""
        return 1 << self.modulus_bits

    @property
    def wire_dtype(self) -> np.dtype[np.unsignedinteger[Any]]:
        """How a masked vector travels: ``uint32`` up to ``M = 2**32``, else ``uint64``."""
        return np.dtype(np.uint32 if self.modulus_bits <= 32 else np.uint64)

    @property
    def max_nodes(self) -> int:
        """Most contributors whose quantized sum cannot wrap around the modulus."""
        return (self.modulus - 1) // self.quantization_range

    def fields(self) -> dict[str, int | float | bool]:
        """The parameters as ``secagg-setup`` fields (read back by :meth:`from_fields`)."""
        return {
            "num-shares": self.num_shares,
            "threshold": self.threshold,
            "clipping-range": self.clipping_range,
            "quantization-range": self.quantization_range,
            "modulus-bits": self.modulus_bits,
            "stochastic-rounding": self.stochastic_rounding,
        }

    @classmethod
    def from_fields(cls, record: ConfigRecord) -> SecAggPlusParameters:
        """Parameters from ``secagg-setup`` fields or a node's state; ``ValueError`` if unsafe."""
        return check_parameters(
            num_shares=record.get("num-shares"),
            threshold=record.get("threshold"),
            clipping_range=record.get("clipping-range"),
            quantization_range=record.get("quantization-range"),
            modulus_bits=record.get("modulus-bits"),
            stochastic_rounding=record.get("stochastic-rounding"),
        )


def is_integer(value: object) -> bool:
    """Whether ``value`` is a Python or NumPy integer (``bool`` is not one)."""
    return isinstance(value, int | np.integer) and not isinstance(value, bool)


def check_parameters(
    *,
    num_shares: object,
    threshold: object,
    clipping_range: object,
    quantization_range: object,
    modulus_bits: object,
    stochastic_rounding: object,
) -> SecAggPlusParameters:
    """Validated protocol parameters (server constructor and client setup alike).

    Raises
    ------
    ValueError
        Naming the parameter and the rule it breaks; values are never adjusted.
    """
    if not is_integer(num_shares) or cast(int, num_shares) < 3:
        raise ValueError(f"num_shares must be an integer >= 3, got {num_shares!r}")
    k = int(cast(int, num_shares))
    if k % 2 == 0:
        raise ValueError(
            f"num_shares must be odd (a ring of num_shares // 2 neighbours on each side "
            f"plus the node itself), got {k}; Flower's legacy SecAgg+ silently halts on even values"
        )
    if not is_integer(threshold):
        raise ValueError(f"reconstruction_threshold must be an integer, got {threshold!r}")
    t = int(cast(int, threshold))
    if not k / 2 < t <= k:
        raise ValueError(
            f"reconstruction_threshold must satisfy num_shares/2 < threshold <= num_shares "
            f"(= {k}), got {t}: at most num_shares/2 would let a set of colluders smaller than "
            "a majority of a neighbourhood reconstruct both secrets of a node"
        )
    if (
        not isinstance(clipping_range, int | float)
        or isinstance(clipping_range, bool)
        or not np.isfinite(clipping_range)
        or clipping_range <= 0
    ):
        raise ValueError(f"clipping_range must be a finite number > 0, got {clipping_range!r}")
    if not is_integer(quantization_range) or not 2 <= cast(int, quantization_range) <= 2**53:
        raise ValueError(
            f"quantization_range must be an integer in [2, 2**53], got {quantization_range!r}"
        )
    if not is_integer(modulus_bits) or not 8 <= cast(int, modulus_bits) <= 64:
        raise ValueError(f"modulus bits must be an integer in [8, 64], got {modulus_bits!r}")
    q, bits = int(cast(int, quantization_range)), int(cast(int, modulus_bits))
    if 2 * q > (1 << bits):
        raise ValueError(
            f"modulus_range (2**{bits}) must be at least 2 * quantization_range ({q}) so that "
            "the sum of two or more clients cannot wrap around"
        )
    if not isinstance(stochastic_rounding, bool):
        raise ValueError(f"stochastic_rounding must be a bool, got {stochastic_rounding!r}")
    return SecAggPlusParameters(k, t, float(clipping_range), q, bits, stochastic_rounding)
