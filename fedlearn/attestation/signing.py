"""Client wallets and signed update commitments (EIP-712).

A client signs, with its wallet key, the typed message::

    UpdateCommitment(bytes32 runId, uint64 round, bytes32 commitment)

under the EIP-712 domain ``{name: "fedlearn", version: "1", chainId,
verifyingContract}``, where ``chainId`` is the chain the run attests on and
``verifyingContract`` the run's ``AttestationLedger`` (a
:class:`SigningDomain`). The domain keeps the signature from being valid as any
other kind of Ethereum message (a transaction, a personal message, another
application's typed data) and from being valid on any other chain or ledger
deployment; ``runId`` and ``round`` bind it to one run and one round. The
server checks it with :func:`check_signed_commitment` against *its own* chain
id and ledger, which rejects a signature replayed from another run, another
chain, another ledger or an earlier round, a commitment that does not match
the bytes the client sent, and a signer other than the client's registered
address. An operator who runs several federations therefore cannot move a
holder's signed commitment from one into another.

Wallet keys come from an encrypted keystore file (Web3 Secret Storage, password
in an environment variable) or from the environment variable
``FEDLEARN_WALLET_KEY``; never from configuration files (:func:`load_wallet`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from eth_account import Account
from eth_account.messages import SignableMessage, encode_typed_data
from eth_account.signers.local import LocalAccount
from eth_utils.address import is_address, to_checksum_address
from eth_utils.hexadecimal import decode_hex, encode_hex

from fedlearn.attestation.hexutil import to_bytes32
from fedlearn.attestation.leaves import commitment_of
from fedlearn.files import create_atomically

__all__ = [
    "KEY_ENV",
    "PASSWORD_ENV",
    "SignatureError",
    "SignedCommitment",
    "SigningDomain",
    "WalletError",
    "check_signed_commitment",
    "load_wallet",
    "save_keystore",
    "sign_commitment",
    "verify_commitment",
]

KEY_ENV = "FEDLEARN_WALLET_KEY"
"""Environment variable holding a hex private key (used when no keystore is given)."""
PASSWORD_ENV = "FEDLEARN_WALLET_PASSWORD"
"""Default environment variable holding the keystore password."""

_DOMAIN_NAME = "fedlearn"
_DOMAIN_VERSION = "1"
_TYPES = {
    "EIP712Domain": [
        {"name": "name", "type": "string"},
        {"name": "version", "type": "string"},
        {"name": "chainId", "type": "uint256"},
        {"name": "verifyingContract", "type": "address"},
    ],
    "UpdateCommitment": [
        {"name": "runId", "type": "bytes32"},
        {"name": "round", "type": "uint64"},
        {"name": "commitment", "type": "bytes32"},
    ],
}


class WalletError(RuntimeError):
    """A wallet key could not be loaded (missing, wrong password, malformed)."""


class SignatureError(ValueError):
    """A signed commitment is invalid, replayed, or from the wrong signer."""


def _round(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**64:
        raise ValueError(f"round must be an int in [0, 2**64), got {value!r}")
    return value


@dataclass(frozen=True, slots=True, kw_only=True)
class SigningDomain:
    """Where a run attests: the chain's id and the ``AttestationLedger``'s address.

    Both go into the EIP-712 domain of every signed commitment, so a signature
    is valid for one ledger deployment on one chain only. Clients learn them
    from the round config (:data:`~fedlearn.wire.ATTEST_CHAIN_ID_KEY`,
    :data:`~fedlearn.wire.ATTEST_LEDGER_KEY`); the server checks replies
    against its own deployment's.
    """

    chain_id: int
    ledger: str

    def __post_init__(self) -> None:
        chain_id = self.chain_id
        if isinstance(chain_id, bool) or not isinstance(chain_id, int) or not 0 < chain_id < 2**256:
            raise ValueError(f"chain_id must be an int in [1, 2**256), got {chain_id!r}")
        if not isinstance(self.ledger, str) or not is_address(self.ledger):
            raise ValueError(f"ledger must be a contract address, got {self.ledger!r}")
        object.__setattr__(self, "ledger", str(to_checksum_address(self.ledger)))

    def to_eip712(self) -> dict[str, Any]:
        """The EIP-712 domain object."""
        return {
            "name": _DOMAIN_NAME,
            "version": _DOMAIN_VERSION,
            "chainId": self.chain_id,
            "verifyingContract": self.ledger,
        }

    def __str__(self) -> str:
        return f"ledger {self.ledger} on chain {self.chain_id}"


def load_wallet(
    *,
    keystore: str | Path | None = None,
    password_env: str = PASSWORD_ENV,
    key_env: str = KEY_ENV,
    environ: Mapping[str, str] | None = None,
) -> LocalAccount:
    """Load a wallet from a keystore file or from the environment.

    Parameters
    ----------
    keystore : path, optional
        Encrypted JSON keystore (Web3 Secret Storage). Its password is read from
        the environment variable ``password_env``.
    password_env : str, default "FEDLEARN_WALLET_PASSWORD"
        Variable holding the keystore password.
    key_env : str, default "FEDLEARN_WALLET_KEY"
        Variable holding a hex private key; used only when ``keystore`` is None.
    environ : mapping, optional
        Environment to read (default ``os.environ``).

    Raises
    ------
    WalletError
        If no key source is available, the password is missing or wrong, or the
        key is malformed. The message never contains the key or password.
    """
    env = os.environ if environ is None else environ
    if keystore is not None:
        path = Path(keystore)
        try:
            encrypted = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise WalletError(f"cannot read keystore {path}: {exc}") from None
        password = env.get(password_env)
        if password is None:
            raise WalletError(f"keystore {path} needs its password in ${password_env}")
        try:
            key = Account.decrypt(encrypted, password)
        except (ValueError, KeyError, TypeError) as exc:
            raise WalletError(f"cannot decrypt keystore {path}: {exc}") from None
        account: LocalAccount = Account.from_key(key)
        return account
    raw = env.get(key_env)
    if not raw:
        raise WalletError(
            f"no wallet: pass a keystore file (password in ${password_env}) "
            f"or set ${key_env} to a hex private key"
        )
    try:
        account = Account.from_key(raw.strip())
    except (ValueError, TypeError):
        raise WalletError(f"${key_env} is not a valid hex private key") from None
    return account


def save_keystore(
    *,
    account: LocalAccount,
    path: str | Path,
    password: str,
    scrypt_n: int | None = None,
) -> Path:
    """Write ``account`` as an encrypted keystore file (0600, atomically); refuse to overwrite.

    Parameters
    ----------
    account : LocalAccount
        The wallet to store.
    path : path
        New file to create.
    password : str
        Encryption password (non-empty).
    scrypt_n : int, optional
        scrypt work factor (a power of two); default eth-account's (2**18). Lower
        it only for throw-away test wallets.

    Raises
    ------
    FileExistsError
        If ``path`` exists.
    """
    if not isinstance(password, str) or not password:
        raise ValueError("a keystore password must be a non-empty string")
    path = Path(path)
    if scrypt_n is not None and (scrypt_n < 2 or scrypt_n & (scrypt_n - 1)):
        raise ValueError(f"scrypt_n must be a power of two >= 2, got {scrypt_n!r}")
    encrypted = Account.encrypt(account.key, password, kdf="scrypt", iterations=scrypt_n)
    if path.exists() or not create_atomically(path, json.dumps(encrypted).encode()):
        raise FileExistsError(f"{path} exists; a keystore is never overwritten")
    return path


def _typed_message(
    *, domain: SigningDomain, run_id: bytes, round: int, commitment: bytes
) -> SignableMessage:
    if not isinstance(domain, SigningDomain):
        raise TypeError(f"domain must be a SigningDomain, got {type(domain).__name__}")
    return encode_typed_data(
        full_message={
            "types": _TYPES,
            "primaryType": "UpdateCommitment",
            "domain": domain.to_eip712(),
            "message": {
                "runId": to_bytes32("run_id", run_id),
                "round": _round(round),
                "commitment": to_bytes32("commitment", commitment),
            },
        }
    )


def sign_commitment(
    *,
    account: LocalAccount,
    domain: SigningDomain,
    run_id: bytes,
    round: int,
    commitment: bytes,
) -> bytes:
    """The 65-byte EIP-712 signature of ``(run_id, round, commitment)`` in ``domain``."""
    message = _typed_message(domain=domain, run_id=run_id, round=round, commitment=commitment)
    return bytes(account.sign_message(message).signature)


def verify_commitment(
    *, domain: SigningDomain, run_id: bytes, round: int, commitment: bytes, signature: bytes
) -> str:
    """The checksummed address that signed ``(run_id, round, commitment)`` in ``domain``.

    A signature over other values, or in another domain (chain, ledger),
    recovers to some unrelated address, so the caller must compare the result
    with the address it expects (or use :func:`check_signed_commitment`).

    Raises
    ------
    SignatureError
        If ``signature`` is not a well-formed signature.
    """
    if not isinstance(signature, bytes | bytearray) or len(signature) != 65:
        raise SignatureError("a signature must be 65 bytes")
    message = _typed_message(domain=domain, run_id=run_id, round=round, commitment=commitment)
    try:
        return str(Account.recover_message(message, signature=bytes(signature)))
    except Exception as exc:  # eth_keys raises several types for malformed signatures
        raise SignatureError(f"malformed signature: {exc}") from None


@dataclass(frozen=True, slots=True, kw_only=True)
class SignedCommitment:
    """What a client attaches to its reply: the signed fields, the signature and its address.

    ``domain`` says where the client believes it signed; the server does not
    trust it but verifies against its own domain (:func:`check_signed_commitment`),
    and uses it only to say why a signature from elsewhere is refused.
    """

    domain: SigningDomain
    run_id: bytes
    round: int
    commitment: bytes
    signer: str
    signature: bytes

    def __post_init__(self) -> None:
        if not isinstance(self.domain, SigningDomain):
            raise ValueError(f"domain must be a SigningDomain, got {type(self.domain).__name__}")
        object.__setattr__(self, "run_id", to_bytes32("run_id", self.run_id))
        _round(self.round)
        object.__setattr__(self, "commitment", to_bytes32("commitment", self.commitment))
        if not isinstance(self.signer, str) or not is_address(self.signer):
            raise ValueError(f"signer must be an address, got {self.signer!r}")
        object.__setattr__(self, "signer", str(to_checksum_address(self.signer)))
        if not isinstance(self.signature, bytes) or len(self.signature) != 65:
            raise ValueError("signature must be 65 bytes")

    @classmethod
    def create(
        cls,
        *,
        account: LocalAccount,
        domain: SigningDomain,
        run_id: bytes,
        round: int,
        payload: bytes,
    ) -> SignedCommitment:
        """Commit to ``payload`` (the exact bytes sent); sign it for this ledger, run and round."""
        commitment = commitment_of(payload)
        return cls(
            domain=domain,
            run_id=run_id,
            round=round,
            commitment=commitment,
            signer=account.address,
            signature=sign_commitment(
                account=account, domain=domain, run_id=run_id, round=round, commitment=commitment
            ),
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON/ConfigRecord-safe form (hex strings and ints)."""
        return {
            "chain_id": self.domain.chain_id,
            "ledger": self.domain.ledger,
            "run_id": encode_hex(self.run_id),
            "round": self.round,
            "commitment": encode_hex(self.commitment),
            "signer": self.signer,
            "signature": encode_hex(self.signature),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SignedCommitment:
        """Inverse of :meth:`to_dict`; raises ``SignatureError`` on malformed input."""
        try:
            chain_id = data["chain_id"]
            if isinstance(chain_id, bool) or not isinstance(chain_id, int):
                raise ValueError(f"chain_id must be an int, got {chain_id!r}")
            return cls(
                domain=SigningDomain(chain_id=chain_id, ledger=str(data["ledger"])),
                run_id=to_bytes32("run_id", data["run_id"]),
                round=int(data["round"]),
                commitment=to_bytes32("commitment", data["commitment"]),
                signer=str(data["signer"]),
                signature=decode_hex(str(data["signature"])),
            )
        except (KeyError, ValueError, TypeError) as exc:
            raise SignatureError(f"malformed signed commitment: {exc}") from None


def check_signed_commitment(
    *,
    signed: SignedCommitment,
    domain: SigningDomain,
    run_id: bytes,
    expected_round: int,
    payload: bytes,
    expected_address: str | None = None,
) -> str:
    """Server-side check of a client's signed commitment; returns the signer's address.

    Parameters
    ----------
    signed : SignedCommitment
        What the client sent with its reply.
    domain : SigningDomain
        The server's own chain id and ledger address (never the client's).
    run_id : bytes
        The current run's id.
    expected_round : int
        The current round.
    payload : bytes
        The exact bytes the server received from the client.
    expected_address : str, optional
        The client's registered wallet address; if given, the signer must be it.

    Raises
    ------
    SignatureError
        Naming the reason: another chain, another ledger, another run,
        another (e.g. earlier) round, a commitment that does not match the
        payload, a signature that does not recover to the claimed signer, or a
        signer other than ``expected_address``.
    """
    run_id = to_bytes32("run_id", run_id)
    _round(expected_round)
    if signed.domain.chain_id != domain.chain_id:
        raise SignatureError(
            f"commitment signed for chain {signed.domain.chain_id}, this run attests on "
            f"chain {domain.chain_id}"
        )
    if signed.domain.ledger != domain.ledger:
        raise SignatureError(
            f"commitment signed for ledger {signed.domain.ledger}, this run's ledger is "
            f"{domain.ledger}"
        )
    if signed.run_id != run_id:
        raise SignatureError(
            f"commitment signed for another run ({encode_hex(signed.run_id)}, "
            f"expected {encode_hex(run_id)})"
        )
    if signed.round != expected_round:
        raise SignatureError(
            f"commitment signed for round {signed.round}, expected round {expected_round} "
            "(replayed)"
        )
    if signed.commitment != commitment_of(payload):
        raise SignatureError("commitment does not match the bytes received")
    recovered = verify_commitment(
        domain=domain,  # the server's own: a relabelled domain does not recover
        run_id=run_id,
        round=expected_round,
        commitment=signed.commitment,
        signature=signed.signature,
    )
    if recovered != signed.signer:
        raise SignatureError(
            f"signature does not recover to the claimed signer {signed.signer} "
            "(signed over other values or by another key)"
        )
    if expected_address is not None:
        if not is_address(expected_address):
            raise ValueError(f"expected_address is not an address: {expected_address!r}")
        if to_checksum_address(expected_address) != recovered:
            raise SignatureError(
                f"signed by {recovered}, but this client's registered address is "
                f"{to_checksum_address(expected_address)}"
            )
    return recovered
