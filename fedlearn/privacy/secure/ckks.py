"""CKKS secure aggregation: clients encrypt, the server adds ciphertexts, one client decrypts.

What each party holds and sees
------------------------------
* **Clients** share one CKKS secret key (TenSEAL symmetric context). It is
  made by one client (the *dealer*) in a key ceremony and sent to every other
  client sealed to that client's X25519 key (:mod:`.envelope`); the server
  relays only sealed envelopes. Clients that join later get the same key from
  a current key holder through the same sealed path.
* **The server** (aggregator) holds a *public* context: the encryption
  parameters without any key (:meth:`CkksServer.public_context`,
  ``is_private()`` is False). It can check that ciphertexts are well formed and
  add them; it cannot decrypt and cannot encrypt.
* **Who decrypts**: after adding the ciphertexts of the round's contributors
  the server sends the encrypted *sum* to one contributor (tried in node-id
  order until one answers) which decrypts it and returns the plaintext sum.
  The server therefore learns the sum of the contributors' vectors (weighted
  model updates and their total weight), as in plaintext FedAvg, and the
  resulting average model goes back to all clients in the next round in the
  clear. No party sees another client's individual update.

Threat model and its limits (read before deploying)
---------------------------------------------------
The server is honest-but-curious and does not collude with clients. With one
key shared by all clients, a server that *deviates* could send a single
client's ciphertext instead of the sum to be decrypted, or substitute its own
X25519 key during registration (registration keys are not authenticated) and
so obtain the CKKS key. The decryptor's refusal of requests naming fewer than
``min_contributors`` contributors is defence in depth only: it cannot check
that the ciphertext really is their sum. Threshold CKKS (the secret key split
among the clients, e.g. OpenFHE's multiparty CKKS) would remove both issues;
TenSEAL/SEAL offer no threshold decryption.

A passive attack that *does* apply to an honest-but-curious server is Li and
Micciancio's (EUROCRYPT 2021): the exact decryption ``m + e`` of a ciphertext
``(c0, c1)`` the server knows reveals the secret key as
``s = (m + e - c0) / c1``. The decryptor therefore *floods* the sum before
decrypting: it adds fresh Gaussian noise (drawn from ``os.urandom``) over the
whole plaintext space (real and imaginary slot parts, i.e. every polynomial
coefficient) with ``decryption_noise_factor`` times the standard deviation of
the noise the sum already carries, so what the server learns about the key is
an RLWE sample with fresh error instead of an exact linear equation. This is
the mitigation OpenFHE and Lattigo use; it is not a formal IND-CPA^D proof at
a stated number of decryptions (for that see Li, Micciancio, Schultz and
Sorrell, CRYPTO 2022), and it costs precision (see :class:`CkksParameters`).

Wire format and size
--------------------
A client packs its vector into ``ceil(L / slots)`` ciphertexts
(``slots = poly_modulus_degree / 2``) and sends each as SEAL's serialization
of a *seeded* symmetric encryption: the uniform half of the ciphertext is
replaced by a 64-byte seed and the rest is zstd-compressed by SEAL. With the
default parameters (N = 4096, a 36-bit data prime) this is about 11.5 bytes
per parameter (measured on 100,000 parameters; a float32 is 4, TenSEAL's usual
N = 8192, [60, 40, 40, 60] asymmetric ciphertexts are 83). TenSEAL's own
``encrypt`` does not keep the seed, so encryption goes through
``tenseal.sealapi`` (SEAL's own Python binding shipped with TenSEAL), whose
serialization only writes to a path: the bytes pass through an anonymous
in-memory file (``memfd``, Linux) or a private temporary directory elsewhere.

Stages (``query.secure`` messages, field ``stage``)
---------------------------------------------------
``ckks-register``
    the node makes an X25519 key pair for the ceremony, keeps the private
    key in ``context.state`` and replies the public key.
``ckks-deal``
    the dealer makes the CKKS key, keeps it, seals the serialized secret
    context to each listed node (the label binds run id, ceremony id and the
    recipient's node id) and replies the envelopes, the public context and
    the key's fingerprint.
``ckks-reshare``
    a key holder seals the key it holds to newly registered nodes.
``ckks-key``
    a node opens its envelope, checks the key's parameters and fingerprint,
    keeps it and replies the fingerprint.
``ckks-decrypt``
    a contributor floods and decrypts the encrypted sum and replies it as a
    float64 array (``SECURE_BLOBS["sum"]``).

The train message of a CKKS round carries ``stage="train"``, the ceremony id
and the key fingerprint; :meth:`CkksClient.protect` refuses to encrypt under
any other key.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
import secrets
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import tenseal as ts
import tenseal.sealapi as sealapi
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Error, Message, RecordDict
from flwr.serverapp import Grid
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from numpy.typing import NDArray

from fedlearn.config import SecureMode
from fedlearn.privacy.secure.base import (
    AggregationAbortedError,
    ClientProtocol,
    SecureSum,
    ServerProtocol,
    blob,
    blob_bytes,
    request,
    stage_of,
)
from fedlearn.privacy.secure.envelope import EnvelopeError, generate_keypair, open_envelope, seal
from fedlearn.wire import SECURE_BLOBS, SECURE_QUERY_TYPE, SECURE_RECORD, CkksStage, ErrorCode

__all__ = [
    "HE_STANDARD_MAX_MODULUS_BITS",
    "CkksClient",
    "CkksParameters",
    "CkksServer",
    "key_fingerprint",
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


#: Where a node keeps its CKKS secrets in ``context.state`` (a ConfigRecord).
_STATE = "fedlearn.secure.ckks"
_FINGERPRINT_TAG = b"fedlearn/ckks/key-fingerprint/v1\x00"
_LABEL_TAG = "fedlearn/ckks/secret-context/v1"
#: SEAL's encryption noise: centred binomial with variance 42/4 = 10.5, plus
#: the rounding of the encoding (variance at most 1/12) per coefficient.
_COEFF_NOISE_VARIANCE = 10.5 + 1.0 / 12.0
#: Standard deviations in the stated error bound (Gaussian tail 1.2e-15 per entry).
_BOUND_SIGMAS = 8.0
_MIN_SCALE_BITS = 20
_MAX_PRIME_BITS = 60
_PUBLIC_KEY_BYTES = 32
_ENCRYPTION_SYMMETRIC = 1


# --------------------------------------------------------------------------- parameters


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
        Noise flooding at decryption (see the module docstring): the decryptor
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

    def _flood_std(self, n_clients: int) -> float:
        # Per real/imaginary slot part: F times the slot noise the sum already carries.
        base = math.sqrt(n_clients * _COEFF_NOISE_VARIANCE * self.poly_modulus_degree / 2)
        return self.decryption_noise_factor * base / self.scale

    def _seal_parameters(self) -> Any:
        parms = sealapi.EncryptionParameters(sealapi.SCHEME_TYPE.CKKS)
        parms.set_poly_modulus_degree(self.poly_modulus_degree)
        parms.set_coeff_modulus(
            sealapi.CoeffModulus.Create(self.poly_modulus_degree, list(self.coeff_mod_bit_sizes))
        )
        return parms


def key_fingerprint(secret_context: bytes) -> str:
    """Hex SHA-256 identifying a serialized CKKS secret context (reveals nothing usable of it)."""
    return hashlib.sha256(_FINGERPRINT_TAG + secret_context).hexdigest()


def _label(run_id: int, ceremony_id: str, node_id: int) -> bytes:
    return f"{_LABEL_TAG}/run={run_id}/ceremony={ceremony_id}/node={node_id}".encode()


# --------------------------------------------------------------------------- SEAL glue


def _tenseal_protos() -> tuple[Any, Any]:
    """Message classes for TenSEAL's context and CKKS vector protobufs (schema from TenSEAL)."""
    fdp = descriptor_pb2.FileDescriptorProto(
        name="fedlearn_tenseal.proto", package="fedlearn_tenseal", syntax="proto3"
    )
    fd = descriptor_pb2.FieldDescriptorProto
    optional, repeated = fd.LABEL_OPTIONAL, fd.LABEL_REPEATED

    def add(name: str, fields: list[tuple[str, int, int, str]]) -> None:
        msg = fdp.message_type.add(name=name)
        for number, (fname, ftype, label, type_name) in enumerate(fields, start=1):
            entry = msg.field.add(name=fname, number=number, type=ftype, label=label)
            if type_name:
                entry.type_name = type_name

    add(
        "Private",
        [
            ("secret_key", fd.TYPE_BYTES, optional, ""),
            ("relin_keys_generated", fd.TYPE_BOOL, optional, ""),
            ("galois_keys_generated", fd.TYPE_BOOL, optional, ""),
        ],
    )
    add(
        "Public",
        [
            ("public_key", fd.TYPE_BYTES, optional, ""),
            ("auto_flags", fd.TYPE_UINT32, optional, ""),
            ("scale", fd.TYPE_DOUBLE, optional, ""),
            ("relin_keys", fd.TYPE_BYTES, optional, ""),
            ("galois_keys", fd.TYPE_BYTES, optional, ""),
        ],
    )
    add(
        "Context",
        [
            ("encryption_parameters", fd.TYPE_BYTES, optional, ""),
            ("public_context", fd.TYPE_MESSAGE, optional, ".fedlearn_tenseal.Public"),
            ("private_context", fd.TYPE_MESSAGE, optional, ".fedlearn_tenseal.Private"),
            ("encryption_type", fd.TYPE_UINT32, optional, ""),
        ],
    )
    add(
        "CKKSVector",
        [
            ("sizes", fd.TYPE_UINT32, repeated, ""),
            ("ciphertexts", fd.TYPE_BYTES, repeated, ""),
            ("scale", fd.TYPE_DOUBLE, optional, ""),
        ],
    )
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fdp)
    return (
        message_factory.GetMessageClass(pool.FindMessageTypeByName("fedlearn_tenseal.Context")),
        message_factory.GetMessageClass(pool.FindMessageTypeByName("fedlearn_tenseal.CKKSVector")),
    )


_ContextProto, _VectorProto = _tenseal_protos()


@contextlib.contextmanager
def _scratch_path() -> Iterator[str]:
    """A path SEAL's file-only (de)serialization can use, kept in memory where possible."""
    if sys.platform.startswith("linux") and hasattr(os, "memfd_create"):
        fd = os.memfd_create("fedlearn-ckks", os.MFD_CLOEXEC)
        try:
            yield f"/proc/self/fd/{fd}"
        finally:
            os.close(fd)
    else:  # pragma: no cover - non-Linux fallback
        with tempfile.TemporaryDirectory(prefix="fedlearn-ckks-") as folder:
            yield os.path.join(folder, "blob")


def _save(save: Callable[[str], None]) -> bytes:
    with _scratch_path() as path:
        save(path)
        with open(path, "rb") as handle:
            return handle.read()


def _load(data: bytes, load: Callable[[str], None]) -> None:
    with _scratch_path() as path:
        with open(path, "wb") as handle:
            handle.write(data)
        load(path)


def _parse_context(data: bytes) -> Any:
    proto = _ContextProto()
    try:
        proto.ParseFromString(data)
    except Exception as exc:  # protobuf's DecodeError
        raise ValueError(f"not a TenSEAL context: {exc}") from exc
    return proto


class _Ring:
    """SEAL objects for one parameter set; with a secret key it can also encrypt and decrypt."""

    def __init__(self, params: CkksParameters, *, secret_context: bytes | None = None) -> None:
        self.params = params
        self.context = sealapi.SEALContext(
            params._seal_parameters(), True, sealapi.SEC_LEVEL_TYPE.TC128
        )
        if not self.context.parameters_set():
            raise ValueError(
                f"SEAL rejects the parameters: {self.context.parameters_error_message()}"
            )
        self.first_parms_id = list(self.context.first_parms_id())
        self.evaluator = sealapi.Evaluator(self.context)
        self.encoder = sealapi.CKKSEncoder(self.context)
        # Largest honest serialized ciphertext: two polynomials, 8 bytes a coefficient.
        self.max_blob = 2 * params.poly_modulus_degree * (len(params._primes) - 1) * 8 + 4096
        self._encryptor: Any = None
        self._decryptor: Any = None
        if secret_context is not None:
            proto = _parse_context(secret_context)
            _check_context_parameters(proto, params)
            if not proto.private_context.secret_key:
                raise ValueError("the secret context holds no secret key")
            key = sealapi.SecretKey()
            try:
                _load(proto.private_context.secret_key, lambda p: key.load(self.context, p))
            except (RuntimeError, ValueError) as exc:
                raise ValueError(f"cannot load the secret key: {exc}") from exc
            self._encryptor = sealapi.Encryptor(self.context, key)
            self._decryptor = sealapi.Decryptor(self.context, key)

    def encrypt(self, vector: NDArray[np.float64]) -> list[bytes]:
        """Seeded symmetric ciphertexts of ``vector``, ``slots`` values each."""
        slots, out = self.params.slots, []
        for start in range(0, vector.size, slots):
            plain = sealapi.Plaintext()
            self.encoder.encode(vector[start : start + slots].tolist(), self.params.scale, plain)
            out.append(_save(self._encryptor.encrypt_symmetric(plain).save))
        return out

    def load(self, data: bytes) -> Any:
        """A ciphertext of the expected shape from bytes, or ``ValueError`` saying why not."""
        if len(data) > self.max_blob:
            raise ValueError(f"{len(data)} bytes is larger than any ciphertext ({self.max_blob})")
        ct = sealapi.Ciphertext()
        try:
            _load(data, lambda p: ct.load(self.context, p))
        except (RuntimeError, ValueError) as exc:
            raise ValueError(f"not a ciphertext under these parameters ({exc})") from exc
        if ct.size() != 2:
            raise ValueError(f"ciphertext has {ct.size()} polynomials, expected 2")
        if list(ct.parms_id()) != self.first_parms_id or not ct.is_ntt_form():
            raise ValueError("ciphertext is not at the fresh level of these parameters")
        if ct.scale != self.params.scale:
            raise ValueError(f"ciphertext scale {ct.scale!r}, expected 2**{self.params.scale_bits}")
        return ct

    def dump(self, ct: Any) -> bytes:
        return _save(ct.save)

    def decrypt_flooded(self, ct: Any, *, count: int, n_clients: int) -> NDArray[np.float64]:
        """Decrypt the first ``count`` slots of ``ct`` after noise flooding (module docstring)."""
        std = self.params._flood_std(n_clients)
        noise = _crypto_normal(2 * self.params.slots) * std
        flood = sealapi.Plaintext()
        complex_noise = (noise[0::2] + 1j * noise[1::2]).tolist()
        self.encoder.encode(complex_noise, ct.parms_id(), ct.scale, flood)
        self.evaluator.add_plain_inplace(ct, flood)
        plain = sealapi.Plaintext()
        self._decryptor.decrypt(ct, plain)
        values = np.asarray(self.encoder.decode_double(plain), dtype=np.float64)
        return values[:count]


def _crypto_normal(n: int) -> NDArray[np.float64]:
    """``n`` standard normal draws from ``os.urandom`` (Box–Muller)."""
    m = -(-n // 2)
    bits = np.frombuffer(os.urandom(16 * m), dtype=np.uint64).reshape(2, m)
    u1 = 1.0 - (bits[0] >> np.uint64(11)).astype(np.float64) * 2.0**-53  # (0, 1]
    u2 = (bits[1] >> np.uint64(11)).astype(np.float64) * 2.0**-53
    radius = np.sqrt(-2.0 * np.log(u1))
    return np.concatenate([radius * np.cos(2 * np.pi * u2), radius * np.sin(2 * np.pi * u2)])[:n]


def _check_context_parameters(proto: Any, params: CkksParameters) -> None:
    if proto.encryption_type != _ENCRYPTION_SYMMETRIC:
        raise ValueError("the context is not a symmetric-encryption CKKS context")
    parms = sealapi.EncryptionParameters(sealapi.SCHEME_TYPE.CKKS)
    try:
        _load(proto.encryption_parameters, parms.load)
    except (RuntimeError, ValueError) as exc:
        raise ValueError(f"unreadable encryption parameters: {exc}") from exc
    if parms != params._seal_parameters():
        raise ValueError(f"the context's encryption parameters differ from {params}")
    if proto.public_context.scale != params.scale:
        raise ValueError(
            f"the context's scale {proto.public_context.scale!r} is not 2**{params.scale_bits}"
        )


def _public_context_bytes(ctx: Any) -> bytes:
    data = ctx.serialize(
        save_public_key=False,
        save_secret_key=False,
        save_galois_keys=False,
        save_relin_keys=False,
    )
    return bytes(data)


def _load_public_context(data: bytes, params: CkksParameters) -> Any:
    """The server's context: parameters only; refuses anything that carries a secret key."""
    proto = _parse_context(data)
    if proto.private_context.secret_key:
        raise ValueError("the 'public' context carries a secret key: refused")
    _check_context_parameters(proto, params)
    try:
        ctx = ts.context_from(data)
    except (RuntimeError, ValueError) as exc:
        raise ValueError(f"TenSEAL cannot load the public context: {exc}") from exc
    if ctx.is_private() or ctx.has_secret_key():
        raise ValueError("the public context can decrypt: refused")
    return ctx


# --------------------------------------------------------------------------- messages


def _fields(msg: Message, stage: str) -> tuple[ConfigRecord, ArrayRecord]:
    """The protocol records of a stage reply or request; ``ValueError`` naming what is wrong."""
    if msg.has_error():
        raise ValueError(f"error reply ({msg.error.code}): {msg.error.reason}")
    if stage_of(msg) != stage:
        raise ValueError(f"expected stage {stage!r}, got {stage_of(msg)!r}")
    blobs = msg.content.array_records.get(SECURE_BLOBS, ArrayRecord())
    return msg.content.config_records[SECURE_RECORD], blobs


def _blob(blobs: ArrayRecord, key: str) -> bytes:
    if key not in blobs:
        raise ValueError(f"missing blob {key!r}")
    try:
        return blob_bytes(blobs[key])
    except ValueError as exc:
        raise ValueError(f"blob {key!r}: {exc}") from exc


def _str(config: ConfigRecord, key: str) -> str:
    value = config.get(key)
    if not isinstance(value, str) or not value:
        raise ValueError(f"field {key!r} must be a non-empty string, got {value!r}")
    return value


def _int(config: ConfigRecord, key: str) -> int:
    value = config.get(key)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"field {key!r} must be an int, got {value!r}")
    return value


def _node_list(config: ConfigRecord, key: str) -> list[int]:
    value = config.get(key)
    if not isinstance(value, list) or not all(
        isinstance(v, int) and not isinstance(v, bool) for v in value
    ):
        raise ValueError(f"field {key!r} must be a list of node ids, got {value!r}")
    if len(set(value)) != len(value):
        raise ValueError(f"field {key!r} lists a node twice: {value}")
    return [int(v) for v in value]


def _exchange(
    grid: Grid,
    contents: dict[int, RecordDict],
    *,
    server_round: int,
    timeout: float,
) -> dict[int, Message]:
    """Send one stage request per node; the replies by node (nodes that did not answer missing)."""
    if not contents:
        return {}
    msgs = [
        Message(
            content, dst_node_id=node, message_type=SECURE_QUERY_TYPE, group_id=str(server_round)
        )
        for node, content in contents.items()
    ]
    replies: dict[int, Message] = {}
    for reply in grid.send_and_receive(msgs, timeout=timeout):
        node = reply.metadata.src_node_id
        if node in contents and node not in replies:
            replies[node] = reply
    return replies


# --------------------------------------------------------------------------- server


@dataclass
class _KeyState:
    """The server's view of the current CKKS key (no secret in it)."""

    ceremony_id: str
    fingerprint: str
    public_context: Any
    holders: list[int] = field(default_factory=list)


class CkksServer(ServerProtocol):
    """The aggregator's side of CKKS mode: runs the key ceremony, adds ciphertexts.

    Parameters
    ----------
    parameters : CkksParameters, optional
        Must equal the clients' parameters (default ``CkksParameters()``).
    min_contributors : int, default 2
        Fewest valid replies a round needs; with fewer the round is aborted
        before anything is decrypted.

    Examples
    --------
    >>> server = CkksServer(min_contributors=3)
    >>> records = server.setup(grid, server_round=1, node_ids=nodes, timeout=30)  # doctest: +SKIP
    >>> total = server.aggregate(grid, server_round=1, replies=replies, length=n, timeout=30)
    ... # doctest: +SKIP
    """

    mode: ClassVar[SecureMode] = "ckks"

    def __init__(
        self, *, parameters: CkksParameters | None = None, min_contributors: int = 2
    ) -> None:
        if parameters is not None and not isinstance(parameters, CkksParameters):
            raise TypeError(f"parameters must be CkksParameters, got {type(parameters).__name__}")
        if isinstance(min_contributors, bool) or not isinstance(min_contributors, int):
            raise ValueError(f"min_contributors must be an int, got {min_contributors!r}")
        if min_contributors < 1:
            raise ValueError(f"min_contributors must be >= 1, got {min_contributors}")
        self._params = parameters if parameters is not None else CkksParameters()
        self._min_contributors = min_contributors
        self._ring = _Ring(self._params)
        self._key: _KeyState | None = None
        self._loaded: dict[int, tuple[Message, list[Any]]] = {}

    @property
    def parameters(self) -> CkksParameters:
        """The CKKS parameters."""
        return self._params

    @property
    def public_context(self) -> Any:
        """The TenSEAL context the server holds (no secret key), or None before the ceremony."""
        return None if self._key is None else self._key.public_context

    @property
    def key_holders(self) -> tuple[int, ...]:
        """Nodes known to hold the current key."""
        return () if self._key is None else tuple(self._key.holders)

    @property
    def fingerprint(self) -> str | None:
        """Fingerprint of the current key (see :func:`key_fingerprint`)."""
        return None if self._key is None else self._key.fingerprint

    # -- setup -----------------------------------------------------------------------

    def setup(
        self, grid: Grid, *, server_round: int, node_ids: Sequence[int], timeout: float
    ) -> dict[int, RecordDict]:
        """Give the key to sampled nodes that lack it; train records for nodes that hold it.

        Runs the key ceremony on first use (and again if no key holder is left to
        reshare to newcomers). Nodes failing a stage are left out of the round.
        """
        nodes = _validate_nodes(node_ids)
        self._loaded.clear()  # ciphertexts checked in an earlier round
        if not math.isfinite(timeout) or timeout <= 0:
            raise ValueError(f"timeout must be > 0 seconds, got {timeout!r}")
        if len(nodes) > self._params.max_clients:
            raise ValueError(
                f"{len(nodes)} nodes sampled but a CKKS sum of more than "
                f"{self._params.max_clients} vectors with entries up to "
                f"{self._params.max_abs_value} can overflow: sample fewer nodes or lower "
                "CkksParameters.scale_bits / max_abs_value"
            )
        kw: dict[str, Any] = {"server_round": server_round, "timeout": timeout}
        if self._key is None:
            self._ceremony(grid, nodes, **kw)
        else:
            newcomers = [n for n in nodes if n not in self._key.holders]
            if newcomers and not self._reshare(grid, newcomers, **kw):
                # No holder answered: retire the key, make a fresh one among the sampled nodes.
                self._key = None
                self._ceremony(grid, nodes, **kw)
        if self._key is None:
            return {}
        train = ConfigRecord(
            {
                "stage": CkksStage.TRAIN,
                "ceremony-id": self._key.ceremony_id,
                "fingerprint": self._key.fingerprint,
            }
        )
        return {
            n: RecordDict({SECURE_RECORD: ConfigRecord(dict(train))})
            for n in nodes
            if n in self._key.holders
        }

    def _register(
        self, grid: Grid, nodes: list[int], ceremony_id: str, **kw: Any
    ) -> dict[int, bytes]:
        replies = _exchange(
            grid,
            {n: request(CkksStage.REGISTER, **{"ceremony-id": ceremony_id}) for n in nodes},
            **kw,
        )
        keys: dict[int, bytes] = {}
        for node, reply in replies.items():
            with contextlib.suppress(ValueError):
                _, blobs = _fields(reply, CkksStage.REGISTER)
                key = _blob(blobs, "public-key")
                if len(key) == _PUBLIC_KEY_BYTES:
                    keys[node] = key
        return keys

    def _sharing_request(
        self, stage: str, ceremony_id: str, keys: dict[int, bytes], holder: int
    ) -> RecordDict:
        recipients = sorted(n for n in keys if n != holder)
        blobs = {f"pk-{n}": keys[n] for n in recipients}
        return request(stage, **{"ceremony-id": ceremony_id, "recipients": recipients}, **blobs)

    def _envelopes(self, reply: Message, stage: str, recipients: list[int]) -> dict[int, bytes]:
        _, blobs = _fields(reply, stage)
        return {n: _blob(blobs, f"env-{n}") for n in recipients}

    def _ceremony(self, grid: Grid, nodes: list[int], **kw: Any) -> None:
        ceremony_id = secrets.token_hex(16)
        keys = self._register(grid, nodes, ceremony_id, **kw)
        for dealer in sorted(keys):
            content = self._sharing_request(CkksStage.DEAL, ceremony_id, keys, dealer)
            reply = _exchange(grid, {dealer: content}, **kw).get(dealer)
            if reply is None:
                continue
            recipients = sorted(n for n in keys if n != dealer)
            try:
                config, blobs = _fields(reply, CkksStage.DEAL)
                fingerprint = _str(config, "fingerprint")
                public = _load_public_context(_blob(blobs, "public-context"), self._params)
                envelopes = self._envelopes(reply, CkksStage.DEAL, recipients)
            except ValueError:
                continue
            self._key = _KeyState(ceremony_id, fingerprint, public, [dealer])
            self._distribute(grid, envelopes, **kw)
            return

    def _reshare(self, grid: Grid, newcomers: list[int], **kw: Any) -> bool:
        assert self._key is not None
        keys = self._register(grid, newcomers, self._key.ceremony_id, **kw)
        if not keys:
            return True  # nobody to give the key to; the current holders still train
        for holder in list(self._key.holders):
            content = self._sharing_request(CkksStage.RESHARE, self._key.ceremony_id, keys, holder)
            reply = _exchange(grid, {holder: content}, **kw).get(holder)
            if reply is None:
                continue
            try:
                config, _ = _fields(reply, CkksStage.RESHARE)
                if _str(config, "fingerprint") != self._key.fingerprint:
                    raise ValueError("holder reports another key")
                envelopes = self._envelopes(reply, CkksStage.RESHARE, sorted(keys))
            except ValueError:
                continue
            self._distribute(grid, envelopes, **kw)
            return True
        return False

    def _distribute(self, grid: Grid, envelopes: dict[int, bytes], **kw: Any) -> None:
        assert self._key is not None
        key = self._key
        contents = {
            node: request(
                CkksStage.KEY,
                **{"ceremony-id": key.ceremony_id, "fingerprint": key.fingerprint},
                envelope=envelope,
            )
            for node, envelope in envelopes.items()
        }
        for node, reply in _exchange(grid, contents, **kw).items():
            with contextlib.suppress(ValueError):
                config, _ = _fields(reply, CkksStage.KEY)
                if _str(config, "fingerprint") == key.fingerprint and node not in key.holders:
                    key.holders.append(node)

    # -- replies and aggregation -------------------------------------------------------

    def check_reply(self, msg: Message, *, length: int) -> str | None:
        """Why a protected train reply is unusable (``None`` if it is well formed).

        Checks the chunk count for ``length``, the key fingerprint, and that each
        chunk deserializes under the server's parameters as a fresh two-part
        ciphertext at the expected scale (catches garbage, truncation, other
        parameters and other keys' tags). CKKS ciphertexts are malleable: a
        changed byte inside a well-formed ciphertext can pass (about half of
        single-byte flips do) and changes the sum; integrity of what a client
        sent comes from the transport (TLS) and its signed update commitment.
        """
        try:
            # Kept for aggregate(): loading 100k parameters' ciphertexts twice cost ~20%.
            self._loaded[id(msg)] = (msg, self._ciphertexts(msg, length=length))
        except ValueError as exc:
            return str(exc)
        return None

    def _ciphertexts(self, msg: Message, *, length: int) -> list[Any]:
        count = self._params.ciphertext_count(length)
        if self._key is None:
            raise ValueError("no CKKS key has been set up")
        if msg.has_error():
            raise ValueError(f"the node replied an error ({msg.error.code}): {msg.error.reason}")
        if SECURE_BLOBS not in msg.content.array_records:
            raise ValueError(f"reply has no {SECURE_BLOBS!r} ArrayRecord")
        blobs = msg.content.array_records[SECURE_BLOBS]
        expected = {f"ct-{i}" for i in range(count)} | {"key"}
        if set(blobs) != expected:
            found = sorted(k for k in blobs if k != "key")
            raise ValueError(
                f"expected {count} ciphertext chunks ct-0..ct-{count - 1} and 'key' for "
                f"length {length}, got {found}"
            )
        if _blob(blobs, "key").hex() != self._key.fingerprint:
            raise ValueError("encrypted under another key (fingerprint differs)")
        out = []
        for i in range(count):
            try:
                out.append(self._ring.load(_blob(blobs, f"ct-{i}")))
            except ValueError as exc:
                raise ValueError(f"ct-{i}: {exc}") from exc
        return out

    def aggregate(
        self,
        grid: Grid,
        *,
        server_round: int,
        replies: Sequence[Message],
        length: int,
        timeout: float,
    ) -> SecureSum:
        """Add the valid replies' ciphertexts and have one contributor decrypt the sum.

        Contributors are asked in node-id order; one that refuses or does not
        answer is skipped. :class:`AggregationAbortedError` if fewer than
        ``min_contributors`` replies are valid or nobody decrypts.
        """
        self._params.ciphertext_count(length)
        total: list[Any] | None = None
        contributors: list[int] = []
        dropped: dict[int, str] = {}
        for msg in replies:
            node = msg.metadata.src_node_id
            if node in contributors:
                dropped[node] = "more than one reply from this node"
                continue
            try:
                loaded = self._loaded.pop(id(msg), None)
                cts = (
                    loaded[1]
                    if loaded is not None and loaded[0] is msg
                    else self._ciphertexts(msg, length=length)
                )
            except ValueError as exc:
                dropped[node] = str(exc)
                continue
            if total is None:
                total = cts
            else:
                for acc, ct in zip(total, cts, strict=True):
                    self._ring.evaluator.add_inplace(acc, ct)
            contributors.append(node)
        contributors.sort()
        if total is None or len(contributors) < self._min_contributors:
            raise AggregationAbortedError(
                f"{len(contributors)} valid CKKS replies, at least {self._min_contributors} "
                f"needed (dropped: {dropped})"
            )
        assert self._key is not None
        sums = {f"sum-{i}": self._ring.dump(ct) for i, ct in enumerate(total)}
        content = request(
            CkksStage.DECRYPT,
            **{
                "ceremony-id": self._key.ceremony_id,
                "fingerprint": self._key.fingerprint,
                "contributors": contributors,
                "length": length,
            },
            **sums,
        )
        refusals: dict[int, str] = {}
        for node in contributors:
            reply = _exchange(
                grid,
                {node: RecordDict(dict(content))},
                server_round=server_round,
                timeout=timeout,
            ).get(node)
            if reply is None:
                refusals[node] = "no reply"
                continue
            try:
                vector = _decrypted(reply, length)
            except ValueError as exc:
                refusals[node] = str(exc)
                continue
            return SecureSum(vector=vector, contributors=tuple(contributors), dropped=dropped)
        raise AggregationAbortedError(f"no contributor decrypted the CKKS sum: {refusals}")


def _decrypted(reply: Message, length: int) -> NDArray[np.float64]:
    _, blobs = _fields(reply, CkksStage.DECRYPT)
    if "sum" not in blobs:
        raise ValueError("decryption reply has no 'sum'")
    array = blobs["sum"]
    if not isinstance(array, Array) or array.dtype != "float64" or list(array.shape) != [length]:
        raise ValueError(f"decryption reply 'sum' is not a float64 vector of length {length}")
    vector = np.asarray(array.numpy(), dtype=np.float64)
    if not np.all(np.isfinite(vector)):
        raise ValueError("decryption reply 'sum' has non-finite entries")
    return vector[:length].copy()


def _validate_nodes(node_ids: Sequence[int]) -> list[int]:
    nodes = list(node_ids)
    if not all(isinstance(n, int) and not isinstance(n, bool) for n in nodes):
        raise ValueError(f"node_ids must be ints, got {node_ids!r}")
    if len(set(nodes)) != len(nodes):
        raise ValueError(f"node_ids lists a node twice: {nodes}")
    return nodes


# --------------------------------------------------------------------------- client


class CkksClient(ClientProtocol):
    """A data holder's side of CKKS mode: key ceremony, encryption, decryption of sums.

    Parameters
    ----------
    parameters : CkksParameters, optional
        Must equal the server's (default ``CkksParameters()``); a key made
        under other parameters is refused.
    min_contributors : int, default 2
        This node refuses to decrypt a sum that names fewer contributors
        (defence in depth: it cannot check what the ciphertext really sums).

    Examples
    --------
    >>> client = CkksClient(min_contributors=3)
    >>> reply = client.handle_query(msg, context)  # doctest: +SKIP
    >>> blobs = client.protect(vector, train_msg, context)  # doctest: +SKIP
    """

    mode: ClassVar[SecureMode] = "ckks"

    def __init__(
        self, *, parameters: CkksParameters | None = None, min_contributors: int = 2
    ) -> None:
        if parameters is not None and not isinstance(parameters, CkksParameters):
            raise TypeError(f"parameters must be CkksParameters, got {type(parameters).__name__}")
        if isinstance(min_contributors, bool) or not isinstance(min_contributors, int):
            raise ValueError(f"min_contributors must be an int, got {min_contributors!r}")
        if min_contributors < 1:
            raise ValueError(f"min_contributors must be >= 1, got {min_contributors}")
        self._params = parameters if parameters is not None else CkksParameters()
        self._min_contributors = min_contributors

    def handle_query(self, msg: Message, context: Context) -> Message:
        """Answer a CKKS stage request; refusals are error replies naming the reason."""
        handlers: dict[str, Callable[[Message, Context], RecordDict]] = {
            CkksStage.REGISTER: self._register,
            CkksStage.DEAL: self._deal,
            CkksStage.RESHARE: self._reshare,
            CkksStage.KEY: self._receive_key,
            CkksStage.DECRYPT: self._decrypt,
        }
        try:
            stage = stage_of(msg)
            if stage not in handlers:
                raise ValueError(f"unknown CKKS stage {stage!r}")
            content = handlers[stage](msg, context)
        except (ValueError, RuntimeError, TypeError) as exc:
            return Message(Error(code=ErrorCode.SECURE, reason=f"CKKS: {exc}"), reply_to=msg)
        return Message(content, reply_to=msg)

    # -- node state ----------------------------------------------------------------------

    @staticmethod
    def _state(context: Context) -> ConfigRecord:
        if _STATE not in context.state.config_records:
            context.state[_STATE] = ConfigRecord()
        return context.state.config_records[_STATE]

    def _held_key(self, context: Context) -> tuple[str, str, bytes]:
        state = self._state(context)
        secret = state.get("secret-context")
        if not isinstance(secret, bytes):
            raise ValueError("this node holds no CKKS key")
        return str(state["ceremony-id"]), str(state["fingerprint"]), secret

    # -- stages ----------------------------------------------------------------------------

    def _register(self, msg: Message, context: Context) -> RecordDict:
        config, _ = _fields(msg, CkksStage.REGISTER)
        ceremony_id = _str(config, "ceremony-id")
        private, public = generate_keypair()
        state = self._state(context)
        state["x25519-private"] = private
        state["registered-for"] = ceremony_id
        return request(CkksStage.REGISTER, **{"public-key": public})

    def _seal_to(
        self, config: ConfigRecord, blobs: ArrayRecord, secret: bytes, context: Context
    ) -> dict[str, bytes]:
        ceremony_id = _str(config, "ceremony-id")
        envelopes = {}
        for node in _node_list(config, "recipients"):
            key = _blob(blobs, f"pk-{node}")
            if node == context.node_id:
                raise ValueError("asked to seal the key to this node itself")
            label = _label(context.run_id, ceremony_id, node)
            envelopes[f"env-{node}"] = seal(key, secret, label=label)
        return envelopes

    def _deal(self, msg: Message, context: Context) -> RecordDict:
        config, blobs = _fields(msg, CkksStage.DEAL)
        ceremony_id = _str(config, "ceremony-id")
        state = self._state(context)
        if state.get("registered-for") != ceremony_id:
            raise ValueError(f"this node did not register for ceremony {ceremony_id}")
        p = self._params
        key = ts.context(
            ts.SCHEME_TYPE.CKKS,
            poly_modulus_degree=p.poly_modulus_degree,
            coeff_mod_bit_sizes=list(p.coeff_mod_bit_sizes),
            encryption_type=ts.ENCRYPTION_TYPE.SYMMETRIC,
        )
        key.global_scale = p.scale
        secret = bytes(
            key.serialize(
                save_public_key=False,
                save_secret_key=True,
                save_galois_keys=False,
                save_relin_keys=False,
            )
        )
        envelopes = self._seal_to(config, blobs, secret, context)
        fingerprint = key_fingerprint(secret)
        self._keep(context, ceremony_id, fingerprint, secret)
        return request(
            CkksStage.DEAL,
            fingerprint=fingerprint,
            **{"public-context": _public_context_bytes(key)},
            **envelopes,
        )

    def _reshare(self, msg: Message, context: Context) -> RecordDict:
        config, blobs = _fields(msg, CkksStage.RESHARE)
        ceremony_id, fingerprint, secret = self._held_key(context)
        if _str(config, "ceremony-id") != ceremony_id:
            raise ValueError(f"this node holds the key of ceremony {ceremony_id}, not that one")
        envelopes = self._seal_to(config, blobs, secret, context)
        return request(CkksStage.RESHARE, fingerprint=fingerprint, **envelopes)

    def _receive_key(self, msg: Message, context: Context) -> RecordDict:
        config, blobs = _fields(msg, CkksStage.KEY)
        ceremony_id = _str(config, "ceremony-id")
        expected = _str(config, "fingerprint")
        state = self._state(context)
        private = state.get("x25519-private")
        if state.get("registered-for") != ceremony_id or not isinstance(private, bytes):
            raise ValueError(f"this node did not register for ceremony {ceremony_id}")
        label = _label(context.run_id, ceremony_id, context.node_id)
        try:
            secret = open_envelope(private, _blob(blobs, "envelope"), label=label)
        except EnvelopeError as exc:
            raise ValueError(str(exc)) from exc
        _Ring(self._params, secret_context=secret)  # parameters and key load, or ValueError
        fingerprint = key_fingerprint(secret)
        if fingerprint != expected:
            raise ValueError("the key in the envelope does not match the announced fingerprint")
        self._keep(context, ceremony_id, fingerprint, secret)
        return request(CkksStage.KEY, fingerprint=fingerprint)

    def _keep(self, context: Context, ceremony_id: str, fingerprint: str, secret: bytes) -> None:
        state = self._state(context)
        for stale in ("x25519-private", "registered-for"):
            if stale in state:
                del state[stale]
        state["ceremony-id"] = ceremony_id
        state["fingerprint"] = fingerprint
        state["secret-context"] = secret

    def _decrypt(self, msg: Message, context: Context) -> RecordDict:
        config, blobs = _fields(msg, CkksStage.DECRYPT)
        _, fingerprint, secret = self._held_key(context)
        if _str(config, "fingerprint") != fingerprint:
            raise ValueError("the sum is under another key (fingerprint differs)")
        contributors = _node_list(config, "contributors")
        if len(contributors) < self._min_contributors:
            raise ValueError(
                f"refusing to decrypt a sum of {len(contributors)} contributor(s): this node "
                f"requires at least {self._min_contributors}"
            )
        length = _int(config, "length")
        count = self._params.ciphertext_count(length)
        if set(blobs) != {f"sum-{i}" for i in range(count)}:
            raise ValueError(f"expected {count} chunks sum-0..sum-{count - 1} for length {length}")
        ring = _Ring(self._params, secret_context=secret)
        slots, parts = self._params.slots, []
        for i in range(count):
            ct = ring.load(_blob(blobs, f"sum-{i}"))
            size = min(slots, length - i * slots)
            parts.append(ring.decrypt_flooded(ct, count=size, n_clients=len(contributors)))
        vector = np.concatenate(parts)
        return RecordDict(
            {
                SECURE_RECORD: ConfigRecord({"stage": CkksStage.DECRYPT}),
                SECURE_BLOBS: ArrayRecord({"sum": Array(vector)}),
            }
        )

    # -- training ----------------------------------------------------------------------------

    def protect(self, vector: NDArray[np.float64], msg: Message, context: Context) -> ArrayRecord:
        """Encrypt ``vector`` under the key the train message names.

        Returns the :data:`SECURE_BLOBS` record: ``ct-0 … ct-{k-1}`` (seeded symmetric
        CKKS ciphertexts, ``slots`` values each) and ``key`` (the key's
        fingerprint). ``ValueError`` if the message names another key, the node
        holds none, or the vector is not a finite 1-d vector with entries up to
        ``max_abs_value``.
        """
        config = msg.content.config_records.get(SECURE_RECORD)
        if config is None or config.get("stage") != CkksStage.TRAIN:
            raise ValueError(
                f"the train message has no {SECURE_RECORD!r} record with stage 'train'"
            )
        ceremony_id, fingerprint, secret = self._held_key(context)
        if config.get("fingerprint") != fingerprint or config.get("ceremony-id") != ceremony_id:
            raise ValueError(
                f"the train message asks for key {config.get('fingerprint')!r}, this node holds "
                f"{fingerprint!r}: refusing to encrypt"
            )
        values = np.asarray(vector)
        if values.ndim != 1 or values.size == 0 or not np.issubdtype(values.dtype, np.number):
            raise ValueError(f"expected a non-empty 1-d numeric vector, got shape {values.shape}")
        values = values.astype(np.float64)
        if not np.all(np.isfinite(values)):
            raise ValueError("the vector has non-finite entries")
        largest = float(np.max(np.abs(values)))
        if largest > self._params.max_abs_value:
            raise ValueError(
                f"an entry has |v| = {largest:.4g} > max_abs_value = "
                f"{self._params.max_abs_value}: the encrypted sum could overflow; clip or "
                "rescale the update"
            )
        ring = _Ring(self._params, secret_context=secret)
        record = ArrayRecord({f"ct-{i}": blob(ct) for i, ct in enumerate(ring.encrypt(values))})
        record["key"] = blob(bytes.fromhex(fingerprint))
        return record
