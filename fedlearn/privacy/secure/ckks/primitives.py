"""CKKS primitives: contexts, ciphertexts, their serialization and checks, noise flooding.

Everything that touches TenSEAL or SEAL lives here, so the server and client
modules speak only of keys, ciphertexts and sums.

* :func:`new_secret_context` makes a key (the dealer's job) and the public
  context the server may hold; :func:`load_public_context` refuses a
  "public" context that carries a key.
* :class:`CkksRing` encrypts as seeded symmetric ciphertexts (two real
  values per complex slot), loads ciphertexts with every shape check (size,
  level, NTT form, scale), dumps them, reads their key-dependent half
  (:meth:`CkksRing.c1_residues`) and decrypts sums after noise flooding.
* :func:`key_fingerprint` names a key, :func:`envelope_label` binds an
  envelope carrying it to the run, the ceremony, the recipient and the dealer.

SEAL's Python binding serializes only to and from a path: bytes pass through
an anonymous in-memory file (``memfd``, Linux) or a private temporary
directory elsewhere.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import os
import struct
import sys
import tempfile
import zlib
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import tenseal as ts
import tenseal.sealapi as sealapi
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from numpy.typing import NDArray

from fedlearn.privacy.noise import gaussian
from fedlearn.privacy.secure.ckks.parameters import CkksParameters

__all__ = [
    "CkksRing",
    "ContextProto",
    "VectorProto",
    "envelope_label",
    "key_fingerprint",
    "load_public_context",
    "new_secret_context",
]

_FINGERPRINT_TAG = b"fedlearn/ckks/key-fingerprint/v1\x00"
_LABEL_TAG = "fedlearn/ckks/secret-context/v2"
_ENCRYPTION_SYMMETRIC = 1


def key_fingerprint(secret_context: bytes) -> str:
    """Hex SHA-256 identifying a serialized CKKS secret context (reveals nothing usable of it)."""
    return hashlib.sha256(_FINGERPRINT_TAG + secret_context).hexdigest()


def envelope_label(
    *, run_id: int, ceremony_id: str, node_id: int, recipient: bytes, dealer: bytes
) -> bytes:
    """The label binding a sealed key to its run, ceremony, recipient and dealer.

    An envelope relayed to another node, another identity, or presented as
    coming from another dealer does not open.
    """
    return (
        f"{_LABEL_TAG}/run={run_id}/ceremony={ceremony_id}/node={node_id}"
        f"/recipient={recipient.hex()}/dealer={dealer.hex()}"
    ).encode()


def new_secret_context(params: CkksParameters) -> tuple[bytes, bytes]:
    """A fresh CKKS key: ``(secret context, public context)``, both serialized.

    The secret context holds the secret key (symmetric encryption, no public,
    Galois or relinearization keys); the public context holds the parameters
    and scale only, which is all the server needs to check and add ciphertexts.
    """
    key = ts.context(
        ts.SCHEME_TYPE.CKKS,
        poly_modulus_degree=params.poly_modulus_degree,
        coeff_mod_bit_sizes=list(params.coeff_mod_bit_sizes),
        encryption_type=ts.ENCRYPTION_TYPE.SYMMETRIC,
    )
    key.global_scale = params.scale
    secret = bytes(
        key.serialize(
            save_public_key=False,
            save_secret_key=True,
            save_galois_keys=False,
            save_relin_keys=False,
        )
    )
    return secret, _public_context_bytes(key)


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


#: Message classes of TenSEAL's ``Context`` and ``CKKSVector`` protobufs.
ContextProto, VectorProto = _tenseal_protos()


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
    proto = ContextProto()
    try:
        proto.ParseFromString(data)
    except Exception as exc:  # protobuf's DecodeError
        raise ValueError(f"not a TenSEAL context: {exc}") from exc
    return proto


class CkksRing:
    """SEAL objects for one parameter set; with a secret key it can also encrypt and decrypt.

    Parameters
    ----------
    params : CkksParameters
        The parameter set (SEAL checks it again at 128-bit security).
    secret_context : bytes, optional
        A serialized TenSEAL secret context under ``params``; without it the
        ring can only load, check, add and dump ciphertexts.

    Raises
    ------
    ValueError
        SEAL rejects the parameters, or ``secret_context`` is not a
        symmetric CKKS context with a secret key under ``params``.
    """

    def __init__(self, params: CkksParameters, *, secret_context: bytes | None = None) -> None:
        self.params = params
        self.context = sealapi.SEALContext(
            params.seal_parameters(), True, sealapi.SEC_LEVEL_TYPE.TC128
        )
        if not self.context.parameters_set():
            raise ValueError(
                f"SEAL rejects the parameters: {self.context.parameters_error_message()}"
            )
        self.first_parms_id = list(self.context.first_parms_id())
        self.evaluator = sealapi.Evaluator(self.context)
        self.encoder = sealapi.CKKSEncoder(self.context)
        # Largest honest serialized ciphertext: two polynomials, 8 bytes a coefficient.
        self.max_blob = 2 * params.poly_modulus_degree * (len(params.primes) - 1) * 8 + 4096
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
        """Seeded symmetric ciphertexts of ``vector``, N values each (two per complex slot).

        Values ``2k`` and ``2k + 1`` of a chunk are the real and imaginary part of
        slot ``k``; an odd chunk is padded with a zero.
        """
        per, out = self.params.values_per_ciphertext, []
        for start in range(0, vector.size, per):
            chunk = vector[start : start + per]
            if chunk.size % 2:
                chunk = np.append(chunk, 0.0)
            plain = sealapi.Plaintext()
            self.encoder.encode((chunk[0::2] + 1j * chunk[1::2]).tolist(), self.params.scale, plain)
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
        """SEAL's serialization of a ciphertext."""
        return _save(ct.save)

    def add(self, cts: list[Any]) -> Any:
        """The sum of ciphertexts (the first is added to in place)."""
        total = cts[0]
        for ct in cts[1:]:
            self.evaluator.add_inplace(total, ct)
        return total

    def c1_residues(self, ct: Any) -> NDArray[np.uint64]:
        """The second polynomial ``c1`` of a two-part ciphertext, shape ``(primes, N)``.

        ``c1`` is the half of a ciphertext that meets the secret key in
        decryption (``c0 + c1·s``); its residues are what the sum MAC
        (:mod:`.summac`) authenticates. Read in NTT form, prime by prime, as
        SEAL stores it.
        """
        n, primes = self.params.poly_modulus_degree, ct.coeff_modulus_size()
        values = _dyn_array_values(ct.dyn_array())
        if values.size != ct.size() * primes * n:
            raise ValueError("unexpected ciphertext layout")
        return values[primes * n : 2 * primes * n].reshape(primes, n)

    def decrypt_flooded(self, ct: Any, *, count: int, n_clients: int) -> NDArray[np.float64]:
        """Decrypt the first ``count`` values of ``ct`` (a sum of ``n_clients``) after flooding.

        Fresh Gaussian noise from the OS CSPRNG over every real and imaginary
        slot part (:meth:`CkksParameters.flood_std`), i.e. Gaussian noise of
        :meth:`CkksParameters.flood_coeff_std` on every coefficient, so the
        released decryption is no exact linear equation in the key.
        """
        noise = gaussian(2 * self.params.slots, self.params.flood_std(n_clients))
        flood = sealapi.Plaintext()
        complex_noise = (noise[0::2] + 1j * noise[1::2]).tolist()
        self.encoder.encode(complex_noise, ct.parms_id(), ct.scale, flood)
        self.evaluator.add_plain_inplace(ct, flood)
        plain = sealapi.Plaintext()
        self._decryptor.decrypt(ct, plain)
        slots = np.asarray(self.encoder.decode_complex(plain), dtype=np.complex128)
        values = np.empty(2 * slots.size, dtype=np.float64)
        values[0::2], values[1::2] = slots.real, slots.imag
        return values[:count]


_SEAL_MAGIC = 0xA15E
_SEAL_HEADER = struct.Struct("<HBBBBHQ")
_COMPR_NONE, _COMPR_ZLIB, _COMPR_ZSTD = 0, 1, 2


def _zstd_decompress(data: bytes, size: int) -> bytes | None:
    """Decompress with the zstd SEAL links into TenSEAL's binding (``None`` if not exported)."""
    try:
        import _sealapi_cpp

        lib = ctypes.CDLL(_sealapi_cpp.__file__)
        decompress = lib.ZSTD_decompress
    except (ImportError, OSError, AttributeError):  # pragma: no cover - other TenSEAL builds
        return None
    decompress.restype = ctypes.c_size_t
    decompress.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p, ctypes.c_size_t]
    out = ctypes.create_string_buffer(size)
    if decompress(out, size, data, len(data)) != size:
        return None
    return out.raw


def _dyn_array_values(array: Any) -> NDArray[np.uint64]:
    """A SEAL ``DynArray<uint64>`` as numpy: its own serialization, decompressed.

    SEAL writes a 16-byte header, then (compressed as the header says) the
    element count and the elements. Element-wise reading is the fallback
    (about 25 ms per ciphertext instead of 2).
    """
    count = int(array.size())
    raw = _save(array.save)
    magic, header_size, _, _, mode, _, total = _SEAL_HEADER.unpack_from(raw)
    body: bytes | None = None
    if magic == _SEAL_MAGIC and header_size == _SEAL_HEADER.size and total == len(raw):
        payload, expected = raw[header_size:], 8 * (count + 1)
        if mode == _COMPR_NONE:
            body = payload
        elif mode == _COMPR_ZLIB:
            body = zlib.decompress(payload)
        elif mode == _COMPR_ZSTD:
            body = _zstd_decompress(payload, expected)
        if body is not None and (
            len(body) != expected or struct.unpack_from("<Q", body)[0] != count
        ):
            body = None
    if body is None:  # pragma: no cover - only for builds without the fast path
        return np.fromiter((array[i] for i in range(count)), dtype=np.uint64, count=count)
    return np.frombuffer(body, dtype="<u8", offset=8).astype(np.uint64)


def _check_context_parameters(proto: Any, params: CkksParameters) -> None:
    if proto.encryption_type != _ENCRYPTION_SYMMETRIC:
        raise ValueError("the context is not a symmetric-encryption CKKS context")
    parms = sealapi.EncryptionParameters(sealapi.SCHEME_TYPE.CKKS)
    try:
        _load(proto.encryption_parameters, parms.load)
    except (RuntimeError, ValueError) as exc:
        raise ValueError(f"unreadable encryption parameters: {exc}") from exc
    if parms != params.seal_parameters():
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


def load_public_context(data: bytes, params: CkksParameters) -> Any:
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
