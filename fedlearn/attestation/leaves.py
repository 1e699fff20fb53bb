"""Contribution records: one Merkle leaf per client and round, encoded as the contract hashes it.

``RewardPool.claim`` recomputes a leaf from the claimer's arguments::

    leaf = keccak256(bytes.concat(keccak256(abi.encode(
        runId, round, msg.sender, commitment, score, examples, epsilonMicro, amount))))

and :meth:`ContributionLeaf.leaf_hash` computes exactly that, so a proof built
here is accepted on chain (and only for the client whose address is in it).

Units and rounding (all on-chain values are unsigned integers):

* ``score`` is fixed point with scale :data:`SCORE_SCALE` (10⁶), rounded half
  to even from the float the scorer returned. Negative scores (a client that
  hurt the model under leave-one-out or Shapley) have no unsigned encoding:
  :func:`round_leaves` refuses them unless the caller opts in with
  ``negative_scores="zero"``.
* ``examples`` is the client's reported example count capped at the run's
  ``max_examples``: clients may lie about their data size, the cap bounds the
  damage and is a public rule of the run.
* ``epsilon_micro`` is ε × 10⁶ from the client's privacy ledger, rounded *up*
  so an attestation never understates the privacy spent; a client without a
  finite ε (no DP) is attested as :data:`EPSILON_UNBOUNDED` (2²⁵⁶ − 1), never 0.
* ``amount`` is ``budget × score // Σ scores`` over the round's leaves (integer
  floor division on the fixed-point scores, so anyone can recompute it from
  the published leaves). Hence Σ amounts ≤ budget; the remainder (at most
  ``n − 1`` base units for ``n`` clients) stays in the pool. When every score
  is 0, every amount is 0.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any, Literal

from eth_abi.abi import encode as abi_encode
from eth_utils.address import is_address, to_checksum_address
from eth_utils.crypto import keccak
from eth_utils.hexadecimal import encode_hex

from fedlearn.attestation.hexutil import to_bytes32

__all__ = [
    "EPSILON_SCALE",
    "EPSILON_UNBOUNDED",
    "LEAF_ABI_TYPES",
    "SCORE_SCALE",
    "Contribution",
    "ContributionLeaf",
    "allocate_amounts",
    "commitment_of",
    "epsilon_to_micro",
    "round_leaves",
    "run_id_from_name",
    "score_to_fixed",
]

SCORE_SCALE = 10**6
"""Fixed-point scale of attested scores."""
EPSILON_SCALE = 10**6
"""Fixed-point scale of attested ε (``epsilon_micro``)."""
_UINT256_MAX = 2**256 - 1
_UINT64_MAX = 2**64 - 1
EPSILON_UNBOUNDED = _UINT256_MAX
"""``epsilon_micro`` of a client whose updates carry no finite DP guarantee."""
LEAF_ABI_TYPES = (
    "bytes32",
    "uint64",
    "address",
    "bytes32",
    "uint256",
    "uint256",
    "uint256",
    "uint256",
)
"""ABI types of the leaf tuple, in contract order."""
_RUN_ID_DOMAIN = b"fedlearn.run-id.v1:"


def run_id_from_name(name: str) -> bytes:
    """The 32-byte run id of a run name: ``keccak256("fedlearn.run-id.v1:" ‖ utf8(name))``.

    Examples
    --------
    >>> run_id_from_name("demo").hex()[:8]
    '0f08da36'
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"a run name must be a non-empty string, got {name!r}")
    return keccak(_RUN_ID_DOMAIN + name.encode("utf-8"))


def commitment_of(payload: bytes) -> bytes:
    """``keccak256`` of exactly the bytes a client sent (its update commitment)."""
    if not isinstance(payload, bytes | bytearray | memoryview):
        raise TypeError(f"payload must be bytes, got {type(payload).__name__}")
    return keccak(bytes(payload))


def score_to_fixed(score: float) -> int:
    """A non-negative finite score as a fixed-point integer (scale 10⁶, half to even)."""
    if isinstance(score, bool) or not isinstance(score, int | float):
        raise TypeError(f"a score must be a number, got {score!r}")
    if not math.isfinite(score) or score < 0:
        raise ValueError(f"a score must be finite and >= 0, got {score!r}")
    scaled = (Decimal(score) * SCORE_SCALE).to_integral_value(rounding=ROUND_HALF_EVEN)
    return _uint("score", int(scaled), _UINT256_MAX)


def epsilon_to_micro(epsilon: float | None) -> int:
    """ε × 10⁶ rounded up; ``None`` or ``inf`` (no DP) gives :data:`EPSILON_UNBOUNDED`."""
    if epsilon is None or (isinstance(epsilon, float) and math.isinf(epsilon) and epsilon > 0):
        return EPSILON_UNBOUNDED
    if isinstance(epsilon, bool) or not isinstance(epsilon, int | float):
        raise TypeError(f"epsilon must be a number or None, got {epsilon!r}")
    if not math.isfinite(epsilon) or epsilon < 0:
        raise ValueError(f"epsilon must be >= 0, got {epsilon!r}")
    micro = math.ceil(Decimal(epsilon) * EPSILON_SCALE)
    return min(int(micro), _UINT256_MAX - 1)


def _uint(name: str, value: object, maximum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {value!r}")
    if not 0 <= value <= maximum:
        raise ValueError(f"{name} must be in [0, {maximum}], got {value}")
    return value


def _address(name: str, value: object) -> str:
    if not isinstance(value, str) or not is_address(value):
        raise ValueError(f"{name} must be a 20-byte hex address, got {value!r}")
    return str(to_checksum_address(value))


@dataclass(frozen=True, slots=True, kw_only=True)
class ContributionLeaf:
    """One client's attested contribution to one round (all fields as on chain).

    Parameters
    ----------
    run_id : bytes
        32-byte run id (:func:`run_id_from_name`).
    round : int
        Round number (uint64).
    client : str
        The client's wallet address (stored checksummed); only it can claim.
    commitment : bytes
        32-byte commitment to what the client sent (:func:`commitment_of`).
    score : int
        Fixed-point score (:data:`SCORE_SCALE`).
    examples : int
        Attested example count (capped by the run's maximum).
    epsilon_micro : int
        ε × 10⁶, or :data:`EPSILON_UNBOUNDED`.
    amount : int
        Reward in token base units.
    """

    run_id: bytes
    round: int
    client: str
    commitment: bytes
    score: int
    examples: int
    epsilon_micro: int
    amount: int

    def __post_init__(self) -> None:
        object.__setattr__(self, "run_id", to_bytes32("run_id", self.run_id))
        _uint("round", self.round, _UINT64_MAX)
        object.__setattr__(self, "client", _address("client", self.client))
        object.__setattr__(self, "commitment", to_bytes32("commitment", self.commitment))
        for name in ("score", "examples", "epsilon_micro", "amount"):
            _uint(name, getattr(self, name), _UINT256_MAX)

    def as_tuple(self) -> tuple[bytes, int, str, bytes, int, int, int, int]:
        """The ABI tuple, in :data:`LEAF_ABI_TYPES` order."""
        return (
            self.run_id,
            self.round,
            self.client,
            self.commitment,
            self.score,
            self.examples,
            self.epsilon_micro,
            self.amount,
        )

    def abi_encoded(self) -> bytes:
        """The ABI encoding of :meth:`as_tuple` (``abi.encode`` of the eight fields)."""
        return abi_encode(list(LEAF_ABI_TYPES), list(self.as_tuple()))

    def leaf_hash(self) -> bytes:
        """``keccak256(keccak256(abi_encoded))``: the Merkle leaf the pool recomputes."""
        return keccak(keccak(self.abi_encoded()))

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form (hex for bytes; uint256 values as decimal strings)."""
        return {
            "run_id": encode_hex(self.run_id),
            "round": self.round,
            "client": self.client,
            "commitment": encode_hex(self.commitment),
            "score": str(self.score),
            "examples": str(self.examples),
            "epsilon_micro": str(self.epsilon_micro),
            "amount": str(self.amount),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ContributionLeaf:
        """Inverse of :meth:`to_dict` (ints may also be JSON numbers).

        Raises
        ------
        ValueError
            If a field is missing or malformed.
        """

        def integer(key: str) -> int:
            value = data[key]
            if isinstance(value, str) and value.isdigit():
                return int(value)
            if isinstance(value, int) and not isinstance(value, bool):
                return value
            raise ValueError(f"leaf field {key!r} must be a non-negative integer, got {value!r}")

        try:
            return cls(
                run_id=to_bytes32("run_id", data["run_id"]),
                round=integer("round"),
                client=data["client"],
                commitment=to_bytes32("commitment", data["commitment"]),
                score=integer("score"),
                examples=integer("examples"),
                epsilon_micro=integer("epsilon_micro"),
                amount=integer("amount"),
            )
        except KeyError as exc:
            raise ValueError(f"leaf is missing field {exc.args[0]!r}") from None
        except TypeError as exc:
            raise ValueError(str(exc)) from None


@dataclass(frozen=True, slots=True, kw_only=True)
class Contribution:
    """What the server knows about one client's reply in a round (input of :func:`round_leaves`).

    Parameters
    ----------
    client : str
        Wallet address that signed the commitment.
    commitment : bytes
        32-byte commitment (:func:`commitment_of` of the reply payload).
    score : float
        Contribution score from the scorer.
    examples : int
        Example count the client reported (capped later).
    epsilon : float or None
        ε the client has spent (privacy ledger); ``None`` if it runs without DP.
    """

    client: str
    commitment: bytes
    score: float
    examples: int
    epsilon: float | None

    def __post_init__(self) -> None:
        object.__setattr__(self, "client", _address("client", self.client))
        object.__setattr__(self, "commitment", to_bytes32("commitment", self.commitment))
        if isinstance(self.score, bool) or not isinstance(self.score, int | float):
            raise TypeError(f"score must be a number, got {self.score!r}")
        if not math.isfinite(self.score):
            raise ValueError(f"score must be finite, got {self.score!r}")
        _uint("examples", self.examples, _UINT256_MAX)
        epsilon_to_micro(self.epsilon)  # validate


def allocate_amounts(scores: Sequence[int], *, budget: int) -> list[int]:
    """``budget × s // Σ s`` for each fixed-point score ``s`` (all 0 when Σ s = 0).

    Examples
    --------
    >>> allocate_amounts([1, 1, 1], budget=100)
    [33, 33, 33]
    """
    _uint("budget", budget, _UINT256_MAX)
    for index, score in enumerate(scores):
        _uint(f"scores[{index}]", score, _UINT256_MAX)
    total = sum(scores)
    if total == 0:
        return [0 for _ in scores]
    return [budget * score // total for score in scores]


def round_leaves(
    *,
    run_id: bytes,
    round: int,
    contributions: Sequence[Contribution],
    budget: int,
    max_examples: int,
    negative_scores: Literal["error", "zero"] = "error",
) -> list[ContributionLeaf]:
    """The leaves of one round, amounts pro rata to scores.

    Parameters
    ----------
    run_id : bytes
        32-byte run id.
    round : int
        Round number (≥ 0).
    contributions : sequence of Contribution
        One per participating client; addresses must be distinct.
    budget : int
        Tokens (base units) this round pays out in total.
    max_examples : int
        Cap on attested example counts (≥ 1).
    negative_scores : {"error", "zero"}, default "error"
        A negative score raises ``ValueError`` unless ``"zero"`` is passed, which
        attests it as 0 (no reward).

    Returns
    -------
    list of ContributionLeaf
        In the order of ``contributions``.

    Examples
    --------
    >>> c = [Contribution(client="0x" + "11" * 20, commitment=bytes([1]) * 32, score=3.0,
    ...                   examples=10, epsilon=1.5),
    ...      Contribution(client="0x" + "22" * 20, commitment=bytes([2]) * 32, score=1.0,
    ...                   examples=10**9, epsilon=None)]
    >>> [(x.amount, x.examples) for x in round_leaves(
    ...     run_id=bytes([0]) * 32, round=1, contributions=c, budget=1000, max_examples=500)]
    [(750, 10), (250, 500)]
    """
    run_id = to_bytes32("run_id", run_id)
    _uint("round", round, _UINT64_MAX)
    _uint("max_examples", max_examples, _UINT256_MAX)
    if max_examples < 1:
        raise ValueError("max_examples must be >= 1")
    if negative_scores not in ("error", "zero"):
        raise ValueError(f"negative_scores must be 'error' or 'zero', got {negative_scores!r}")
    seen: set[str] = set()
    fixed: list[int] = []
    for item in contributions:
        if not isinstance(item, Contribution):
            raise TypeError(f"contributions must be Contribution objects, got {item!r}")
        if item.client in seen:
            raise ValueError(f"client {item.client} appears twice in round {round}")
        seen.add(item.client)
        if item.score < 0:
            if negative_scores == "error":
                raise ValueError(
                    f"client {item.client} has negative score {item.score} in round {round}; "
                    "pass negative_scores='zero' to attest it as 0"
                )
            fixed.append(0)
        else:
            fixed.append(score_to_fixed(item.score))
    amounts = allocate_amounts(fixed, budget=budget)
    return [
        ContributionLeaf(
            run_id=run_id,
            round=round,
            client=item.client,
            commitment=item.commitment,
            score=score,
            examples=min(item.examples, max_examples),
            epsilon_micro=epsilon_to_micro(item.epsilon),
            amount=amount,
        )
        for item, score, amount in zip(contributions, fixed, amounts, strict=True)
    ]
