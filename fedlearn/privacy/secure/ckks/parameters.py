"""CKKS parameters: 128-bit security limits, flooding sized to a statistical security level.

:class:`CkksParameters` validates a parameter set eagerly (ring degree, the
coefficient-modulus primes against the HomomorphicEncryption.org table, the
encoding scale, the largest value a client may encrypt, the statistical
security of decryption and the number of decryptions a key may serve) and
states what follows from it: values per ciphertext, the largest decryptable
sum, how many clients a sum may hold, the flooding noise and the error bound
of a decrypted sum.
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

#: SEAL's encryption noise is centred binomial (21 coin pairs): every coefficient of a
#: fresh ciphertext's error is an integer in [-21, 21] with variance 21/2.
_CBD_BOUND = 21
#: Per-coefficient variance of one fresh ciphertext: the noise plus the encoding's rounding.
_COEFF_NOISE_VARIANCE = 10.5 + 1.0 / 12.0
#: Standard deviations in the stated error bound (Gaussian tail 1.2e-15 per entry).
_BOUND_SIGMAS = 8.0
#: Coefficient head-room kept free of message for errors and flooding (a 2**-8 share of q/2).
_HEADROOM = 2.0**-8
#: Flooding tail allowed for in the head-room (10 standard deviations).
_TAIL_SIGMAS = 10.0
_MIN_SCALE_BITS = 20
_MAX_PRIME_BITS = 60
_MIN_STATISTICAL_SECURITY = 30


def _positive_int(name: str, value: object, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return value


@dataclass(frozen=True, kw_only=True)
class CkksParameters:
    r"""CKKS parameters, validated for 128-bit security, a usable scale and safe decryption.

    Parameters
    ----------
    poly_modulus_degree : int, default 4096
        Ring degree N (a power of two, 1024 … 32768). A ciphertext holds N real
        values: ``N / 2`` complex slots, two real values in each (real and
        imaginary part).
    coeff_mod_bit_sizes : tuple[int, ...], default (36, 36, 36)
        Bit sizes of the coefficient-modulus primes. The last one is TenSEAL's
        key-switching ("special") prime, which ciphertexts do not carry; the
        others are the data primes a ciphertext lives modulo (72 bits at the
        default). Their total must not exceed :data:`HE_STANDARD_MAX_MODULUS_BITS`
        for N (108 of 109 bits at the default).
    scale_bits : int, default 62
        The encoding scale is ``2**scale_bits``. At least 20, and small enough
        to leave room for sums (``max_abs_sum >= max_abs_value``).
    max_abs_value : float, default 1.0
        Largest ``|v_i|`` a client may encrypt (:meth:`CkksClient.protect`
        refuses larger entries). The sum of at most :attr:`max_clients`
        vectors then cannot overflow the modulus.
    statistical_security : int, default 40
        ``s``: whatever an adversary learns about the secret key from all the
        decryptions it obtains gives it at most a ``2**-s`` advantage (at
        least 30, OpenFHE's floor).
    max_decryptions : int, default 65536
        ``τ``: ciphertext decryptions one key may serve over its life. The
        decryptor counts them and refuses past ``τ``; the server then makes a
        new key (a new ceremony). One round decrypts ``ceil(L / N)`` ciphertexts.

    Notes
    -----
    **Noise flooding.** A CKKS decryption ``c0 + c1·s`` released in the clear
    is an exact linear equation in the secret key ``s`` (Li and Micciancio,
    EUROCRYPT 2021). The decryptor therefore adds fresh Gaussian noise of
    standard deviation

    .. math:: \sigma_{flood} = \sqrt{12\,\tau}\; 2^{s/2}\; t

    to every coefficient before decoding, where ``t`` bounds the error of the
    ciphertext it decrypts; this is Li, Micciancio, Schultz and Sorrell,
    "Securing Approximate Homomorphic Encryption Using Differential Privacy",
    CRYPTO 2022 (Corollary 2, in the coefficient-embedding form OpenFHE's
    ``CKKS_NOISE_FLOODING.md`` states and implements as ``NOISE_FLOODING_DECRYPT``):
    then ``τ`` decryptions give an adversary at most a ``2**-s`` advantage in the
    IND-CPA^D game. For a sum of K fresh SEAL ciphertexts ``t = 21·K``
    (every error coefficient of one is in [−21, 21]); the decryptor counts K
    itself from the signed contributions it verified.

    **Error.** Each decrypted value carries Gaussian error with standard deviation

    .. math:: \sigma_K = \sqrt{N/2\,(K \nu + \sigma_{flood}^2)} \, / \, 2^{scale}

    (``ν = 10.58``: SEAL's noise variance plus the encoding's rounding).
    :meth:`error_bound` returns ``8 σ_K``, which every entry respects except
    with probability below 1e-8 for vectors of up to 10^7 entries. Defaults:
    1.5e-5 for K = 10 and 1.5e-4 for K = 100 (flooding is >99.99% of it).

    **Why these defaults.** Flooding at ``s = 40`` needs about 34 bits above the
    ciphertext error, the sum about 9 bits above the scale: 72 data bits.
    Aggregation needs no multiplication, so the data primes are all the
    ciphertext carries; two real values per complex slot halve the bytes per
    value, so a seeded symmetric ciphertext costs about 11.6 bytes per parameter
    (72 bits per coefficient, zstd-compressed by SEAL), under the 12-byte
    target.

    Examples
    --------
    >>> params = CkksParameters()
    >>> params.values_per_ciphertext, params.ciphertext_count(100_000)
    (4096, 25)
    >>> CkksParameters(poly_modulus_degree=8192, coeff_mod_bit_sizes=(60, 60, 60, 60, 40))
    Traceback (most recent call last):
    ...
    ValueError: coeff_mod_bit_sizes (60, 60, 60, 60, 40) total 280 bits: poly_modulus_degree 8192 allows at most 218 bits for 128-bit security (HomomorphicEncryption.org standard)
    """  # noqa: E501

    poly_modulus_degree: int = 4096
    coeff_mod_bit_sizes: tuple[int, ...] = (36, 36, 36)
    scale_bits: int = 62
    max_abs_value: float = 1.0
    statistical_security: int = 40
    max_decryptions: int = 2**16
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
        security = self.statistical_security
        if (
            isinstance(security, bool)
            or not isinstance(security, int)
            or security < (_MIN_STATISTICAL_SECURITY)
        ):
            raise ValueError(
                f"statistical_security must be an int >= {_MIN_STATISTICAL_SECURITY} bits "
                "(decryptions released with less flooding let the server recover the key, Li "
                f"and Micciancio 2021), got {security!r}"
            )
        _positive_int("max_decryptions", self.max_decryptions)
        m = self.max_abs_value
        if not isinstance(m, int | float) or not math.isfinite(m) or m <= 0:
            raise ValueError(f"max_abs_value must be a finite number > 0, got {m!r}")
        if m > self.max_abs_sum:
            raise ValueError(
                f"max_abs_value={m} exceeds max_abs_sum={self.max_abs_sum:.4g}: not even one "
                "vector would decrypt; lower scale_bits or max_abs_value"
            )
        worst = self.max_clients
        tail = _TAIL_SIGMAS * self.flood_coeff_std(worst) + (_CBD_BOUND + 1) * worst
        if tail > _HEADROOM * self._half_q:
            raise ValueError(
                f"the flooding noise for a sum of {worst} clients (statistical_security="
                f"{security}, max_decryptions={self.max_decryptions}) does not fit under the "
                "data modulus: add data bits or lower max_decryptions"
            )

    @property
    def slots(self) -> int:
        """Complex slots per ciphertext (``poly_modulus_degree / 2``)."""
        return self.poly_modulus_degree // 2

    @property
    def values_per_ciphertext(self) -> int:
        """Real values per ciphertext: two per complex slot (``poly_modulus_degree``)."""
        return self.poly_modulus_degree

    @property
    def data_bits(self) -> int:
        """Bits of the modulus a ciphertext lives modulo (all primes but the last)."""
        return sum(self.coeff_mod_bit_sizes[:-1])

    @property
    def scale(self) -> float:
        """The encoding scale ``2**scale_bits``."""
        return float(2**self.scale_bits)

    @property
    def _half_q(self) -> float:
        return float(math.prod(self._primes[:-1]) // 2)

    @property
    def max_abs_sum(self) -> float:
        """Largest ``|Σ v_i|`` per entry that decrypts correctly.

        A coefficient of an encoded vector is at most ``√2·max|entry|·scale``
        (two values share a complex slot); a share of ``q/2`` stays free for
        the encryption error and the flooding noise.
        """
        return (1 - _HEADROOM) * self._half_q / (math.sqrt(2) * self.scale)

    @property
    def max_clients(self) -> int:
        """Most vectors with entries up to ``max_abs_value`` whose sum decrypts correctly."""
        return int(self.max_abs_sum // self.max_abs_value)

    def ciphertext_count(self, length: int) -> int:
        """Ciphertexts for a vector of ``length`` values (``ceil(length / N)``)."""
        _positive_int("length", length)
        return -(-length // self.values_per_ciphertext)

    def ciphertext_error_bound(self, n_clients: int) -> int:
        """``t``: largest error coefficient of a sum of ``n_clients`` fresh ciphertexts (21·K)."""
        return _CBD_BOUND * _positive_int("n_clients", n_clients)

    def flood_coeff_std(self, n_clients: int) -> float:
        """Flooding standard deviation per coefficient, ``√(12τ)·2^(s/2)·t`` (see Notes)."""
        t = self.ciphertext_error_bound(n_clients)
        return math.sqrt(12 * self.max_decryptions) * 2 ** (self.statistical_security / 2) * t

    def flood_std(self, n_clients: int) -> float:
        """The same flooding per decoded value (real or imaginary slot part).

        The canonical embedding is ``√(N/2)`` times an isometry from
        coefficients to slot parts, so Gaussian slot noise of this standard
        deviation is Gaussian coefficient noise of :meth:`flood_coeff_std`.
        """
        half_n = self.poly_modulus_degree / 2
        return self.flood_coeff_std(n_clients) * math.sqrt(half_n) / self.scale

    def noise_std(self, n_clients: int) -> float:
        """Standard deviation of one entry's error in a decrypted sum of ``n_clients``."""
        half_n = self.poly_modulus_degree / 2
        flood = self.flood_coeff_std(n_clients) ** 2
        variance = half_n * (n_clients * _COEFF_NOISE_VARIANCE + flood)
        return math.sqrt(variance) / self.scale

    def error_bound(self, n_clients: int) -> float:
        """Bound on ``|decrypted sum - true sum|`` per entry (8 standard deviations)."""
        return _BOUND_SIGMAS * self.noise_std(n_clients)

    @property
    def primes(self) -> tuple[int, ...]:
        """The coefficient-modulus primes SEAL chose (the key-switching prime last)."""
        return self._primes

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
