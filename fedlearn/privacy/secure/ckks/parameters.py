"""CKKS parameters: 128-bit security limits and the precision they give.

:class:`CkksParameters` validates a parameter set eagerly (ring degree, the
coefficient-modulus primes against the HomomorphicEncryption.org table, the
encoding scale, the largest value a client may encrypt, the noise-flooding
factor) and states what follows from it: values per ciphertext, the largest
decryptable sum, how many clients a sum may hold and the error bound of a
decrypted sum.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import tenseal.sealapi as sealapi

__all__ = [
    "HE_STANDARD_MAX_MODULUS_BITS",
    "CkksParameters",
    "parameters_and_min_contributors",
]

#: Largest total coefficient-modulus bit count per ring degree for 128-bit
#: classical security (HomomorphicEncryption.org standard, ternary secret;
#: the same table SEAL enforces).
HE_STANDARD_MAX_MODULUS_BITS: dict[int, int] = {
    1024: 27,
    2048: 54,
    4096: 109,
    8192: 218,
    16384: 438,
    32768: 881,
}

#: SEAL's encryption noise: centred binomial with variance 42/4 = 10.5, plus
#: the rounding of the encoding (variance at most 1/12) per coefficient.
_COEFF_NOISE_VARIANCE = 10.5 + 1.0 / 12.0
#: Standard deviations in the stated error bound (Gaussian tail 1.2e-15 per entry).
_BOUND_SIGMAS = 8.0
_MIN_SCALE_BITS = 20
_MAX_PRIME_BITS = 60


@dataclass(frozen=True, kw_only=True)
class CkksParameters:
    r"""CKKS parameters, validated for 128-bit security and a usable scale.

    Parameters
    ----------
    poly_modulus_degree : int, default 4096
        Ring degree N (a power of two, 1024 … 32768); a ciphertext holds
        ``N / 2`` values.
    coeff_mod_bit_sizes : tuple[int, ...], default (36, 36)
        Bit sizes of the coefficient-modulus primes. The last one is TenSEAL's
        key-switching ("special") prime, which ciphertexts do not carry; the
        others are the data primes a ciphertext lives modulo. Their total must
        not exceed :data:`HE_STANDARD_MAX_MODULUS_BITS` for N (72 of 109 bits
        at the default, so the default is well above 128-bit security).
    scale_bits : int, default 28
        The encoding scale is ``2**scale_bits``: values are encoded as
        integers ``round(x * 2**scale_bits)``. At least 20, and small enough to
        leave room for sums (``max_abs_sum >= max_abs_value``).
    max_abs_value : float, default 1.0
        Largest ``|v_i|`` a client may encrypt (:meth:`CkksClient.protect`
        refuses larger entries). The sum of at most :attr:`max_clients`
        vectors then cannot overflow the modulus.
    decryption_noise_factor : float, default 4.0
        Noise flooding at decryption (see the package docstring): the decryptor
        adds fresh noise with this many times the standard deviation of the
        noise the sum carries. At least 1.

    Notes
    -----
    Why the default: aggregation needs only additions, so one data prime is
    enough, and the wire size of a seeded symmetric ciphertext is set by that
    prime's bit count alone (about ``bits / 4`` bytes per value before SEAL's
    zstd pass, which adds ~25%): 36 bits gives 11.5 bytes per parameter, 40
    bits 12.1. With a 36-bit prime q and scale ``2**28`` a sum decrypts
    correctly while every entry stays below ``max_abs_sum = q / 2**29`` ≈ 128.

    Error bound: each entry of a decrypted sum of K fresh ciphertexts carries
    Gaussian-like error with standard deviation

    .. math:: \sigma_K = \sqrt{(1 + F^2) K \nu N / 2 + N / 24} \, / \, 2^{s}

    (``ν = 10.58`` is SEAL's per-coefficient encryption-noise variance plus
    encoding rounding, ``F`` the decryption noise factor, ``s`` the scale
    bits). :meth:`error_bound` returns ``8 σ_K``, which every entry respects
    except with probability below 1e-8 for vectors of up to 10^7 entries.
    Defaults: 5.7e-5 for K = 10, 1.8e-4 for K = 100 (the maxima measured over
    100,000 entries are about half of that); without flooding (F = 0, not
    allowed) they would be 4.1 times smaller.

    Examples
    --------
    >>> params = CkksParameters()
    >>> params.slots, params.ciphertext_count(100_000)
    (2048, 49)
    >>> CkksParameters(poly_modulus_degree=8192, coeff_mod_bit_sizes=(60, 60, 60, 60, 40))
    Traceback (most recent call last):
    ...
    ValueError: coeff_mod_bit_sizes (60, 60, 60, 60, 40) total 280 bits: poly_modulus_degree 8192 allows at most 218 bits for 128-bit security (HomomorphicEncryption.org standard)
    """  # noqa: E501

    poly_modulus_degree: int = 4096
    coeff_mod_bit_sizes: tuple[int, ...] = (36, 36)
    scale_bits: int = 28
    max_abs_value: float = 1.0
    decryption_noise_factor: float = 4.0
    _primes: tuple[int, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        n = self.poly_modulus_degree
        if isinstance(n, bool) or not isinstance(n, int) or n not in HE_STANDARD_MAX_MODULUS_BITS:
            raise ValueError(
                f"poly_modulus_degree must be one of {sorted(HE_STANDARD_MAX_MODULUS_BITS)}, "
                f"got {n!r}"
            )
        sizes = self.coeff_mod_bit_sizes
        if not isinstance(sizes, tuple | list) or not all(
            isinstance(b, int) and not isinstance(b, bool) for b in sizes
        ):
            raise ValueError(f"coeff_mod_bit_sizes must be a tuple of ints, got {sizes!r}")
        sizes = tuple(sizes)
        object.__setattr__(self, "coeff_mod_bit_sizes", sizes)
        if len(sizes) < 2:
            raise ValueError(
                "coeff_mod_bit_sizes needs at least two primes: data prime(s) and "
                f"TenSEAL's key-switching prime last, got {sizes}"
            )
        min_bits = int(math.log2(2 * n)) + 2
        bad = [b for b in sizes if not min_bits <= b <= _MAX_PRIME_BITS]
        if bad:
            raise ValueError(
                f"coeff_mod_bit_sizes {sizes}: every prime needs {min_bits} to "
                f"{_MAX_PRIME_BITS} bits at poly_modulus_degree {n}, got {bad}"
            )
        limit = HE_STANDARD_MAX_MODULUS_BITS[n]
        if sum(sizes) > limit:
            raise ValueError(
                f"coeff_mod_bit_sizes {sizes} total {sum(sizes)} bits: poly_modulus_degree "
                f"{n} allows at most {limit} bits for 128-bit security "
                "(HomomorphicEncryption.org standard)"
            )
        try:
            moduli = sealapi.CoeffModulus.Create(n, list(sizes))
        except (RuntimeError, ValueError) as exc:
            raise ValueError(f"coeff_mod_bit_sizes {sizes} at degree {n}: {exc}") from exc
        object.__setattr__(self, "_primes", tuple(int(m.value()) for m in moduli))
        s = self.scale_bits
        if isinstance(s, bool) or not isinstance(s, int) or s < _MIN_SCALE_BITS:
            raise ValueError(
                f"scale_bits must be an int >= {_MIN_SCALE_BITS} (below that the encryption "
                f"noise swamps the values), got {s!r}"
            )
        if s > self.data_bits - 2:
            raise ValueError(
                f"scale_bits={s} leaves no room for sums: the data modulus has "
                f"{self.data_bits} bits, so scale_bits must be at most {self.data_bits - 2} "
                "(each bit below that doubles the largest decryptable sum)"
            )
        m = self.max_abs_value
        if not isinstance(m, int | float) or not math.isfinite(m) or m <= 0:
            raise ValueError(f"max_abs_value must be a finite number > 0, got {m!r}")
        if m > self.max_abs_sum:
            raise ValueError(
                f"max_abs_value={m} exceeds max_abs_sum={self.max_abs_sum:.4g}: not even one "
                "vector would decrypt; lower scale_bits or max_abs_value"
            )
        f = self.decryption_noise_factor
        if not isinstance(f, int | float) or not math.isfinite(f) or f < 1:
            raise ValueError(
                "decryption_noise_factor must be a finite number >= 1 (without noise "
                "flooding a released decryption lets the server recover the key, Li and "
                f"Micciancio 2021), got {f!r}"
            )

    @property
    def slots(self) -> int:
        """Values per ciphertext (``poly_modulus_degree / 2``)."""
        return self.poly_modulus_degree // 2

    @property
    def data_bits(self) -> int:
        """Bits of the modulus a ciphertext lives modulo (all primes but the last)."""
        return sum(self.coeff_mod_bit_sizes[:-1])

    @property
    def scale(self) -> float:
        """The encoding scale ``2**scale_bits``."""
        return float(2**self.scale_bits)

    @property
    def max_abs_sum(self) -> float:
        """Largest ``|Σ v_i|`` per entry that decrypts correctly (0.1% below the hard limit)."""
        q = int(math.prod(self._primes[:-1]))
        return float(0.999 * (q // 2) / 2**self.scale_bits)

    @property
    def max_clients(self) -> int:
        """Most vectors with entries up to ``max_abs_value`` whose sum decrypts correctly."""
        return int(self.max_abs_sum // self.max_abs_value)

    def ciphertext_count(self, length: int) -> int:
        """Ciphertexts for a vector of ``length`` values (``ceil(length / slots)``)."""
        if isinstance(length, bool) or not isinstance(length, int) or length < 1:
            raise ValueError(f"length must be an int >= 1, got {length!r}")
        return -(-length // self.slots)

    def noise_std(self, n_clients: int) -> float:
        """Standard deviation of one entry's error in a decrypted sum of ``n_clients``."""
        if isinstance(n_clients, bool) or not isinstance(n_clients, int) or n_clients < 1:
            raise ValueError(f"n_clients must be an int >= 1, got {n_clients!r}")
        half_n = self.poly_modulus_degree / 2
        flood = self.decryption_noise_factor**2
        variance = (1 + flood) * n_clients * _COEFF_NOISE_VARIANCE * half_n + half_n / 12
        return math.sqrt(variance) / self.scale

    def error_bound(self, n_clients: int) -> float:
        """Bound on ``|decrypted sum - true sum|`` per entry (8 standard deviations)."""
        return _BOUND_SIGMAS * self.noise_std(n_clients)

    @property
    def primes(self) -> tuple[int, ...]:
        """The coefficient-modulus primes SEAL chose (the key-switching prime last)."""
        return self._primes

    def flood_std(self, n_clients: int) -> float:
        """Standard deviation of the flooding noise per real and imaginary slot part.

        ``decryption_noise_factor`` times the slot noise a sum of ``n_clients``
        fresh ciphertexts already carries (see :mod:`fedlearn.privacy.secure.ckks`).
        """
        base = math.sqrt(n_clients * _COEFF_NOISE_VARIANCE * self.poly_modulus_degree / 2)
        return self.decryption_noise_factor * base / self.scale

    def seal_parameters(self) -> Any:
        """SEAL's ``EncryptionParameters`` for this parameter set (a fresh object)."""
        parms = sealapi.EncryptionParameters(sealapi.SCHEME_TYPE.CKKS)
        parms.set_poly_modulus_degree(self.poly_modulus_degree)
        parms.set_coeff_modulus(
            sealapi.CoeffModulus.Create(self.poly_modulus_degree, list(self.coeff_mod_bit_sizes))
        )
        return parms


def parameters_and_min_contributors(
    parameters: CkksParameters | None, min_contributors: int
) -> tuple[CkksParameters, int]:
    """A side's constructor arguments, checked: parameters (default ``CkksParameters()``), floor.

    Raises
    ------
    TypeError
        ``parameters`` is not :class:`CkksParameters`.
    ValueError
        ``min_contributors`` is not an int >= 1.
    """
    if parameters is not None and not isinstance(parameters, CkksParameters):
        raise TypeError(f"parameters must be CkksParameters, got {type(parameters).__name__}")
    if isinstance(min_contributors, bool) or not isinstance(min_contributors, int):
        raise ValueError(f"min_contributors must be an int, got {min_contributors!r}")
    if min_contributors < 1:
        raise ValueError(f"min_contributors must be >= 1, got {min_contributors}")
    return (parameters if parameters is not None else CkksParameters()), min_contributors
