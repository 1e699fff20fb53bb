"""Data holders' identity keys: signed statements, fingerprints, and pins across runs.

A secure mode that trusts the server to say who is who is broken by a server
that lies. Every data holder therefore has an **identity key** with which it
signs what it contributes to a key ceremony and to a sum, and every holder
checks the others' signatures against identities it can verify itself.

Why a dedicated Ed25519 key, not the holder's wallet
----------------------------------------------------
The wallet (secp256k1, :mod:`fedlearn.attestation.signing`) signs commitments in
*attested* runs only and controls the holder's reward tokens; the secure mode
must be authenticated in every run, attested or not, and a key used online for
every stage of every round should not be the key that moves funds (one key, one
purpose: NIST SP 800-57 Part 1, section 5.2). A keystore wallet would also be
decrypted (scrypt) at every stage. Ed25519 (RFC 8032, through ``cryptography``)
signs deterministically (no per-signature randomness to get wrong), its public
key is 32 bytes and its fingerprint short enough to read aloud.

Where the key lives (:func:`node_identity`)
-------------------------------------------
* ``node_config["identity-dir"]``, else, for a real holder's SuperNode (its node
  config names a ``data-path``), the SuperNode's own home ``$FLWR_HOME``
  (which ``fedlearn client`` always sets, one per holder) under
  ``fedlearn-identity/``, else ``$FEDLEARN_HOME/identity`` or
  ``~/.fedlearn/identity``: ``ckks-identity.key`` (32 raw bytes, created 0600
  atomically, directory 0700) and the pin file ``ckks-pins.json``. Both
  persist across runs: one identity directory per holder and federation.
* Simulated holders (bundled partitions in the operator's own process, no
  ``data-path``): a fresh key per run kept in the node's ``context.state``;
  their pins last for the run. Simulation has no adversarial server.

The holder's name is ``node_config["holder-name"]``, else
``partition-<partition-id>``, else ``holder-`` and the start of its fingerprint.

Registration and pins (trust on first use)
------------------------------------------
The operator registers holders by name and identity (it collects the
fingerprints holders print) and relays each holder's self-signed registration
in the key ceremony. A holder checks every identity it is shown against its pin
file (:class:`IdentityPins`): a **known name with another key, or a known key
under another name, is refused loudly** (an error reply and an ERROR log line
naming both fingerprints). What happens to a *new* identity is the holder's
policy, ``node_config["ckks-new-holders"]``:

``"first-run"`` (default)
    Trust on first use, during the holder's first run in this federation
    only: every identity met in that run is pinned and its fingerprint logged
    at WARNING, for the holder to compare with the operator's published
    registration list. From the next run on the membership is closed: a new
    identity is refused until the holder pins it (:func:`pin_holders`). An
    identity the server invents later can therefore neither deal a key to this
    holder nor receive one from it.
``"refuse"``
    Only pinned identities, ever: the holder pins the operator's registration
    list before its first run (:func:`pin_holders`, after comparing the
    fingerprints out of band). A pin file written that way has no first-use
    window under the default policy either.
``"pin"``
    Trust every new identity on first use, in every run (changed keys are
    still refused): for federations whose membership changes often.

What trust on first use cannot do: during a holder's first run, an operator
that invents a holder identity gets it pinned. The fingerprint log is what
shows it; pinning the registration list beforehand is what prevents it.

Examples
--------
>>> identity = HolderIdentity.generate("hospital-a")
>>> message = statement("example", run=1, text="hello")
>>> verify(identity.public, message, identity.sign(message))
>>> pins = IdentityPins()
>>> pins.check("hospital-a", identity.public)
True
>>> pins.check("hospital-a", identity.public)
False
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, cast

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from flwr.app import ConfigRecord, Context

from fedlearn.files import create_atomically, private_directory, write_atomically

__all__ = [
    "IDENTITY_BYTES",
    "SIGNATURE_BYTES",
    "HolderIdentity",
    "IdentityError",
    "IdentityPins",
    "NewHolders",
    "PinMismatchError",
    "default_identity_dir",
    "fingerprint",
    "node_identity",
    "pin_holders",
    "save_node_pins",
    "statement",
    "verify",
]

log = logging.getLogger(__name__)

#: Bytes of an Ed25519 public (and private) key.
IDENTITY_BYTES = 32
#: Bytes of an Ed25519 signature.
SIGNATURE_BYTES = 64
#: What a holder does with an identity it has never pinned (see the module docstring).
NewHolders = Literal["first-run", "pin", "refuse"]

_STATEMENT_TAG = b"fedlearn/secure/statement/v1\x00"
_FINGERPRINT_TAG = b"fedlearn/secure/identity-fingerprint/v1\x00"
_KEY_FILE = "ckks-identity.key"
_PIN_FILE = "ckks-pins.json"
_STATE = "fedlearn.secure.identity"


class IdentityError(ValueError):
    """An identity, signature or registration does not check out (the reason says why)."""


class PinMismatchError(IdentityError):
    """A known holder presented another key (or a known key another name): refused loudly."""


def fingerprint(public: bytes) -> str:
    """A holder identity's fingerprint for people to compare: ``ed25519:`` and 160 bits in hex.

    Examples
    --------
    >>> fingerprint(bytes(32))
    'ed25519:72ad 1515 8e78 ced9 0275 06c6 9462 6108 f5d4 1521'
    """
    digest = hashlib.sha256(_FINGERPRINT_TAG + _public_bytes(public)).hexdigest()[:40]
    return "ed25519:" + " ".join(digest[i : i + 4] for i in range(0, 40, 4))


def statement(purpose: str, **fields: bytes | str | int) -> bytes:
    """The exact bytes a holder signs: a purpose and named fields, unambiguously framed.

    Each field is ``len(name) name type len(value) value`` (4-byte big-endian
    lengths, a one-byte type tag); ints are 8-byte big-endian (0 … 2**64 − 1),
    strings UTF-8. The purpose, every field name and type are part of what is
    signed, so a signature on one kind of statement is never valid as another.
    """
    out = bytearray(_STATEMENT_TAG)
    _frame(out, purpose.encode())
    for name, value in fields.items():
        if isinstance(value, bool):
            raise TypeError(f"field {name!r}: booleans are not statement fields")
        if isinstance(value, int):
            if not 0 <= value < 2**64:
                raise ValueError(f"field {name!r} must be in [0, 2**64), got {value}")
            kind, data = b"i", value.to_bytes(8, "big")
        elif isinstance(value, str):
            kind, data = b"s", value.encode()
        elif isinstance(value, bytes):
            kind, data = b"b", value
        else:
            raise TypeError(f"field {name!r}: {type(value).__name__} is not a statement field")
        _frame(out, name.encode())
        out += kind
        _frame(out, data)
    return bytes(out)


def _frame(out: bytearray, data: bytes) -> None:
    out += struct.pack(">I", len(data)) + data


def _public_bytes(public: bytes) -> bytes:
    if not isinstance(public, bytes) or len(public) != IDENTITY_BYTES:
        raise IdentityError(f"an identity public key has {IDENTITY_BYTES} bytes")
    return public


def verify(public: bytes, message: bytes, signature: bytes) -> None:
    """Check ``signature`` on ``message`` by ``public``; :class:`IdentityError` if it fails."""
    if not isinstance(signature, bytes) or len(signature) != SIGNATURE_BYTES:
        raise IdentityError(f"a signature has {SIGNATURE_BYTES} bytes")
    try:
        Ed25519PublicKey.from_public_bytes(_public_bytes(public)).verify(signature, message)
    except (InvalidSignature, ValueError):
        raise IdentityError("the signature does not verify") from None


@dataclass(frozen=True)
class HolderIdentity:
    """A holder's name and Ed25519 identity key (the private half never leaves the holder).

    Attributes
    ----------
    name : str
        The name the operator registers the holder under.
    public : bytes
        The 32-byte public key.
    """

    name: str
    _private: bytes = field(repr=False)
    public: bytes = field(init=False)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name or len(self.name) > 200:
            raise IdentityError(f"a holder name is a non-empty string, got {self.name!r}")
        if not isinstance(self._private, bytes) or len(self._private) != IDENTITY_BYTES:
            raise IdentityError(f"an identity private key has {IDENTITY_BYTES} bytes")
        key = Ed25519PrivateKey.from_private_bytes(self._private)
        public = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        object.__setattr__(self, "public", public)

    @classmethod
    def generate(cls, name: str) -> HolderIdentity:
        """A fresh identity (a new Ed25519 key from the OS CSPRNG)."""
        return cls(name, Ed25519PrivateKey.generate().private_bytes_raw())

    @property
    def fingerprint(self) -> str:
        """:func:`fingerprint` of the public key."""
        return fingerprint(self.public)

    def sign(self, message: bytes) -> bytes:
        """The 64-byte Ed25519 signature of ``message`` (sign :func:`statement` bytes only)."""
        return Ed25519PrivateKey.from_private_bytes(self._private).sign(message)


class IdentityPins:
    """The identities a holder has seen for its federation: ``name -> public key``.

    Parameters
    ----------
    path : Path, optional
        The pin file (JSON, written atomically, mode 0600); without one the pins
        live in memory (or in ``context.state`` through :func:`node_identity`).
    accept_new : bool, default True
        Whether a new name is pinned on first use (logged with its
        fingerprint); if not, only identities already pinned are accepted.
    pins : mapping, optional
        Initial ``name -> public key hex`` pins (when there is no file).
    first_run : int, optional
        The run in which trust on first use pinned the first identities (kept
        in the pin file; :func:`node_identity` closes the window after it).
    announce : int, default logging.WARNING
        Log level of the line that prints a newly pinned fingerprint.
    """

    def __init__(
        self,
        path: Path | None = None,
        *,
        accept_new: bool = True,
        pins: Mapping[str, str] | None = None,
        first_run: int | None = None,
        announce: int = logging.WARNING,
    ) -> None:
        self.path = path
        self.accept_new = accept_new
        self.first_run = first_run
        self._announce = announce
        self._pins: dict[str, str] = dict(pins or {})
        if path is not None and path.exists():
            self._pins, self.first_run = _read_pins(path)
        self._changed = False

    @property
    def pins(self) -> dict[str, str]:
        """A copy of the pins (``name -> public key hex``)."""
        return dict(self._pins)

    def check(self, name: str, public: bytes) -> bool:
        """Accept ``(name, public)`` or raise; ``True`` if it was pinned just now.

        Raises
        ------
        PinMismatchError
            ``name`` is pinned to another key, or ``public`` to another name.
        IdentityError
            The identity is new and new holders are not accepted.
        """
        key = _public_bytes(public).hex()
        pinned = self._pins.get(name)
        if pinned == key:
            return False
        if pinned is not None:
            message = (
                f"holder {name!r} presented identity {fingerprint(public)} but is pinned to "
                f"{fingerprint(bytes.fromhex(pinned))}: refused (if the holder really changed "
                "its key, it must say so out of band and you remove its pin)"
            )
            log.error("CKKS identity: %s", message)
            raise PinMismatchError(message)
        other = next((n for n, k in self._pins.items() if k == key), None)
        if other is not None:
            message = (
                f"identity {fingerprint(public)} is pinned as holder {other!r}, not {name!r}: "
                "refused (one holder, one name)"
            )
            log.error("CKKS identity: %s", message)
            raise PinMismatchError(message)
        if not self.accept_new:
            message = (
                f"holder {name!r} ({fingerprint(public)}) is not pinned, and this holder "
                "accepts no new holders now (node config ckks-new-holders; pin it with "
                "pin_holders after checking its fingerprint)"
            )
            log.error("CKKS identity: %s", message)
            raise IdentityError(message)
        self._pins[name] = key
        self._changed = True
        log.log(
            self._announce,
            "CKKS identity: pinned new holder %r %s on first use; compare it with the "
            "operator's registration list",
            name,
            fingerprint(public),
        )
        return True

    def save(self) -> None:
        """Write new pins to the pin file (nothing to do without a file or a change)."""
        if self.path is not None and self._changed:
            write_atomically(self.path, self.to_json().encode())
            self._changed = False

    def to_json(self) -> str:
        """The pins as the pin file's JSON text."""
        data: dict[str, object] = {"version": 1, "holders": dict(sorted(self._pins.items()))}
        if self.first_run is not None:
            data["first-run"] = self.first_run
        return json.dumps(data, indent=1)


def _read_pins(path: Path) -> tuple[dict[str, str], int | None]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        holders = data["holders"]
        first_run = data.get("first-run")
        if data.get("version") != 1 or not isinstance(holders, dict):
            raise ValueError("not a version-1 pin file")
        if first_run is not None and (
            isinstance(first_run, bool) or not isinstance(first_run, int)
        ):
            raise ValueError("first-run must be a run id")
        out = {str(name): str(key) for name, key in holders.items()}
        for key in out.values():
            _public_bytes(bytes.fromhex(key))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise IdentityError(f"cannot read the pin file {path}: {exc}") from None
    return out, first_run


def pin_holders(path: Path, holders: Mapping[str, bytes | str]) -> IdentityPins:
    """Pin the operator's registration list ahead of any run (checked against existing pins).

    ``holders`` maps each registered name to its identity public key (bytes or
    hex). Compare the fingerprints with the holders themselves before pinning.
    """
    pins = IdentityPins(Path(path), accept_new=True)  # the holder's explicit act
    for name, public in holders.items():
        pins.check(name, public if isinstance(public, bytes) else bytes.fromhex(public))
    pins.save()
    return pins


def default_identity_dir() -> Path:
    """``$FEDLEARN_HOME/identity`` or ``~/.fedlearn/identity``."""
    home = os.environ.get("FEDLEARN_HOME")
    return (Path(home) if home else Path.home() / ".fedlearn") / "identity"


def _holder_name(context: Context, public: bytes) -> str:
    config = context.node_config
    name = config.get("holder-name")
    if isinstance(name, str) and name:
        return name
    partition = config.get("partition-id")
    if isinstance(partition, int) and not isinstance(partition, bool):
        return f"partition-{partition}"
    return "holder-" + fingerprint(public)[8:].replace(" ", "")[:12]


def _policy(context: Context) -> NewHolders:
    policy = context.node_config.get("ckks-new-holders", "first-run")
    if policy not in ("first-run", "pin", "refuse"):
        raise IdentityError(
            f"node config ckks-new-holders must be 'first-run', 'pin' or 'refuse', got {policy!r}"
        )
    return cast(NewHolders, policy)


def _identity_dir(context: Context) -> Path | None:
    """Where a real holder keeps its identity; ``None`` for a simulated one."""
    config = context.node_config
    if config.get("identity-dir"):
        return Path(str(config["identity-dir"]))
    if not config.get("data-path"):
        return None
    node_home = os.environ.get("FLWR_HOME")
    return Path(node_home) / "fedlearn-identity" if node_home else default_identity_dir()


def node_identity(context: Context) -> tuple[HolderIdentity, IdentityPins]:
    """The node's identity and pins (see the module docstring for where they live).

    Call :meth:`save_node_pins` after accepting new identities so they persist.
    """
    directory = _identity_dir(context)
    policy = _policy(context)
    if directory is not None:
        private_directory(directory)
        key_file = directory / _KEY_FILE
        if not key_file.exists():
            create_atomically(key_file, Ed25519PrivateKey.generate().private_bytes_raw())
        private = key_file.read_bytes()
        probe = HolderIdentity("probe", private)
        pin_file = directory / _PIN_FILE
        pins = IdentityPins(pin_file)
        if policy == "first-run" and not pin_file.exists():
            pins.first_run = context.run_id  # this run opens (and is) the first-use window
        pins.accept_new = policy == "pin" or (
            policy == "first-run" and pins.first_run == context.run_id
        )
        return HolderIdentity(_holder_name(context, probe.public), private), pins
    if _STATE not in context.state.config_records:
        context.state[_STATE] = ConfigRecord(
            {"private": Ed25519PrivateKey.generate().private_bytes_raw(), "pins": "{}"}
        )
    record = context.state.config_records[_STATE]
    stored = record["private"]
    if not isinstance(stored, bytes):
        raise IdentityError("the node state holds no identity key")
    probe = HolderIdentity("probe", stored)
    # Simulated holders live for one run in the operator's process: their first run is
    # their only run, and their pins are not news.
    pins = IdentityPins(
        accept_new=policy != "refuse",
        pins=json.loads(str(record["pins"])),
        announce=logging.DEBUG,
    )
    return HolderIdentity(_holder_name(context, probe.public), stored), pins


def save_node_pins(context: Context, pins: IdentityPins) -> None:
    """Persist ``pins`` where :func:`node_identity` found them (file or ``context.state``)."""
    if pins.path is not None:
        pins.save()
    elif _STATE in context.state.config_records:
        context.state.config_records[_STATE]["pins"] = json.dumps(pins.pins)
