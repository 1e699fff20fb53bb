"""Per-round attestation bundles: publish, verify against the chain, claim rewards.

After each round the server writes ``RUN_DIR/attestations/round-NNNNNN.json``
(:meth:`RoundBundle.write`): the run id, round, Merkle root, aggregate hash,
the round's reward budget, the transaction hash once known, and every leaf
with its leaf hash and proof. Bundles are public: they hold only what the
leaves attest (addresses, commitments, scores, example counts, ε, amounts).

Anyone can check a client's record (:func:`verify_client`), trusting only the
chain: for every round in which the address appears, the leaf hash is
recomputed from the leaf's fields, its proof must lead to the root that
``rootOf(run, round)`` returns on chain, the whole leaf set must rebuild that
root, and the amounts must follow the published rule
``budget × score // Σ scores``. A failure names the round and the reason.

:func:`claim_rewards` claims each verified, unclaimed round with its proof
(one transaction per round) and skips rounds already claimed.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from eth_account.signers.local import LocalAccount
from eth_utils.address import is_address, to_checksum_address
from eth_utils.hexadecimal import encode_hex

from fedlearn.attestation.chain import ChainError, ChainUnavailableError, Contracts
from fedlearn.attestation.hexutil import to_bytes32
from fedlearn.attestation.leaves import ContributionLeaf, allocate_amounts
from fedlearn.attestation.merkle import MerkleTree, verify_proof

__all__ = [
    "BUNDLE_FORMAT",
    "ClaimReport",
    "RoundBundle",
    "VerificationError",
    "VerificationReport",
    "bundle_dir",
    "bundle_path",
    "claim_rewards",
    "verify_bundles",
    "verify_client",
]

BUNDLE_FORMAT = "fedlearn.attestation.bundle/1"
"""Value of the ``format`` field of every bundle file."""
_DIR = "attestations"
_FILE = re.compile(r"^round-(\d+)\.json$")
_ZERO = bytes(32)


def bundle_dir(run_dir: str | Path) -> Path:
    """``RUN_DIR/attestations``."""
    return Path(run_dir) / _DIR


def bundle_path(run_dir: str | Path, round: int) -> Path:
    """``RUN_DIR/attestations/round-NNNNNN.json``."""
    if isinstance(round, bool) or not isinstance(round, int) or round < 0:
        raise ValueError(f"round must be an int >= 0, got {round!r}")
    return bundle_dir(run_dir) / f"round-{round:06d}.json"


@dataclass(frozen=True, slots=True, kw_only=True)
class RoundBundle:
    """The published attestation of one round.

    Build it with :meth:`build`; ``root`` is computed, never passed in.
    """

    run_id: bytes
    round: int
    root: bytes
    aggregate_hash: bytes
    budget: int
    leaves: tuple[ContributionLeaf, ...]
    tx_hash: bytes | None = None
    run_name: str | None = None

    @classmethod
    def build(
        cls,
        *,
        leaves: Sequence[ContributionLeaf],
        aggregate_hash: bytes,
        budget: int,
        run_name: str | None = None,
        tx_hash: bytes | None = None,
    ) -> RoundBundle:
        """Bundle a round's leaves (all of one run and round) and compute the root.

        Raises
        ------
        ValueError
            If there are no leaves, they mix runs or rounds, or amounts exceed the budget.
        """
        if not leaves:
            raise ValueError("a round bundle needs at least one leaf")
        first = leaves[0]
        for leaf in leaves:
            if (leaf.run_id, leaf.round) != (first.run_id, first.round):
                raise ValueError("all leaves of a bundle must share run id and round")
        if isinstance(budget, bool) or not isinstance(budget, int) or budget < 0:
            raise ValueError(f"budget must be an int >= 0, got {budget!r}")
        if sum(leaf.amount for leaf in leaves) > budget:
            raise ValueError("the leaves' amounts exceed the round budget")
        tree = MerkleTree.from_leaf_hashes(leaf.leaf_hash() for leaf in leaves)
        return cls(
            run_id=first.run_id,
            round=first.round,
            root=tree.root,
            aggregate_hash=to_bytes32("aggregate_hash", aggregate_hash),
            budget=budget,
            leaves=tuple(leaves),
            tx_hash=tx_hash,
            run_name=run_name,
        )

    def tree(self) -> MerkleTree:
        """The Merkle tree of the leaves."""
        return MerkleTree.from_leaf_hashes(leaf.leaf_hash() for leaf in self.leaves)

    def leaf_of(self, address: str) -> ContributionLeaf | None:
        """The leaf of ``address`` in this round, if it took part."""
        wanted = to_checksum_address(address)
        return next((leaf for leaf in self.leaves if leaf.client == wanted), None)

    def to_dict(self) -> dict[str, Any]:
        """JSON form: leaves with their leaf hashes and proofs."""
        tree = self.tree()
        return {
            "format": BUNDLE_FORMAT,
            "run_name": self.run_name,
            "run_id": encode_hex(self.run_id),
            "round": self.round,
            "root": encode_hex(self.root),
            "aggregate_hash": encode_hex(self.aggregate_hash),
            "budget": str(self.budget),
            "tx_hash": encode_hex(self.tx_hash) if self.tx_hash is not None else None,
            "leaves": [
                leaf.to_dict()
                | {
                    "leaf_hash": encode_hex(leaf.leaf_hash()),
                    "proof": [encode_hex(p) for p in tree.proof(leaf.leaf_hash())],
                }
                for leaf in self.leaves
            ],
        }

    def write(self, run_dir: str | Path) -> Path:
        """Write atomically to :func:`bundle_path` and return the path."""
        path = bundle_path(run_dir, self.round)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".json.tmp")
        with tmp.open("w", encoding="utf-8") as handle:
            json.dump(self.to_dict(), handle, indent=1)
            handle.flush()
            os.fsync(handle.fileno())
        tmp.replace(path)
        return path


@dataclass(frozen=True, slots=True)
class _Published:
    """A bundle as read from disk (fields unchecked against each other)."""

    round: int
    run_id: bytes
    root: bytes
    budget: int
    leaves: tuple[tuple[ContributionLeaf, bytes | None, list[bytes]], ...]


def _read(path: Path) -> _Published:
    data = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(data, Mapping) or data.get("format") != BUNDLE_FORMAT:
        raise ValueError(f"not a {BUNDLE_FORMAT} file")
    leaves = []
    for index, item in enumerate(data["leaves"]):
        leaf = ContributionLeaf.from_dict(item)
        stored = (
            to_bytes32(f"leaves[{index}].leaf_hash", item["leaf_hash"])
            if "leaf_hash" in item
            else None
        )
        proof = [to_bytes32(f"leaves[{index}].proof", p) for p in item.get("proof", [])]
        leaves.append((leaf, stored, proof))
    return _Published(
        round=int(data["round"]),
        run_id=to_bytes32("run_id", data["run_id"]),
        root=to_bytes32("root", data["root"]),
        budget=int(data["budget"]),
        leaves=tuple(leaves),
    )


@dataclass(slots=True)
class VerificationReport:
    """Outcome of :func:`verify_bundles` for one address.

    Attributes
    ----------
    verified : list of int
        Rounds whose record of the address checks out against the chain.
    failures : dict of int to str
        Rounds that failed, with the reason (``-1`` for an unreadable file name).
    leaves : dict of int to (ContributionLeaf, list of bytes)
        The verified leaves and their proofs, by round (what a claim needs).
    """

    verified: list[int] = field(default_factory=list)
    failures: dict[int, str] = field(default_factory=dict)
    leaves: dict[int, tuple[ContributionLeaf, list[bytes]]] = field(default_factory=dict)


class VerificationError(ValueError):
    """A client's record failed verification; ``report`` says which rounds and why."""

    def __init__(self, report: VerificationReport) -> None:
        self.report = report
        reasons = "; ".join(f"round {r}: {why}" for r, why in sorted(report.failures.items()))
        super().__init__(f"verification failed: {reasons}")


def _bundle_files(run_dir: Path) -> Iterable[tuple[int, Path]]:
    directory = bundle_dir(run_dir)
    if not directory.is_dir():
        raise FileNotFoundError(f"no attestation bundles in {directory}")
    for path in sorted(directory.iterdir()):
        match = _FILE.match(path.name)
        if match:
            yield int(match.group(1)), path


def _check_round(
    published: _Published, address: str, contracts: Contracts
) -> tuple[ContributionLeaf, list[bytes]] | str | None:
    """The verified leaf and proof, a failure reason, or None if the address is absent."""
    mine = [entry for entry in published.leaves if entry[0].client == address]
    if not mine:
        return None
    if len(mine) > 1:
        return f"{address} appears {len(mine)} times"
    leaf, stored_hash, proof = mine[0]
    if leaf.round != published.round or leaf.run_id != published.run_id:
        return "the leaf names another run or round than its bundle"
    leaf_hash = leaf.leaf_hash()
    if stored_hash is not None and stored_hash != leaf_hash:
        return "the leaf's fields do not match its recorded leaf hash (bundle altered)"
    on_chain = contracts.root_of(run_id=published.run_id, round=published.round)
    if on_chain == _ZERO:
        return "no root posted on chain for this round (yet)"
    if not verify_proof(leaf_hash=leaf_hash, proof=proof, root=on_chain):
        return (
            f"the proof of {address}'s leaf does not lead to the on-chain root "
            f"{encode_hex(on_chain)} (bundle altered or not the posted one)"
        )
    try:
        tree = MerkleTree.from_leaf_hashes(entry[0].leaf_hash() for entry in published.leaves)
    except ValueError as exc:
        return f"the bundle's leaves do not form a tree: {exc}"
    if tree.root != on_chain:
        return "the bundle's leaves do not rebuild the on-chain root"
    expected = allocate_amounts([e[0].score for e in published.leaves], budget=published.budget)
    if [e[0].amount for e in published.leaves] != expected:
        return "amounts do not follow budget × score // Σ scores"
    return leaf, proof


def verify_bundles(
    *, run_dir: str | Path, address: str, contracts: Contracts
) -> VerificationReport:
    """Check every published round of ``address`` against the chain (does not raise on failure).

    Raises
    ------
    FileNotFoundError
        If the run directory has no bundles.
    ChainUnavailableError
        If the chain cannot be reached.
    """
    if not isinstance(address, str) or not is_address(address):
        raise ValueError(f"address must be an address, got {address!r}")
    address = str(to_checksum_address(address))
    report = VerificationReport()
    for round_number, path in _bundle_files(Path(run_dir)):
        try:
            published = _read(path)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            report.failures[round_number] = f"{path.name} is unreadable: {exc}"
            continue
        if published.round != round_number:
            report.failures[round_number] = f"{path.name} holds round {published.round}"
            continue
        outcome = _check_round(published, address, contracts)
        if outcome is None:
            continue
        if isinstance(outcome, str):
            report.failures[round_number] = outcome
        else:
            report.verified.append(round_number)
            report.leaves[round_number] = outcome
    return report


def verify_client(*, run_dir: str | Path, address: str, contracts: Contracts) -> list[int]:
    """The rounds in which ``address``'s published record verifies against the chain.

    Parameters
    ----------
    run_dir : path
        The run directory (bundles in ``attestations/``).
    address : str
        The client's wallet address.
    contracts : Contracts
        The deployment whose ledger holds the roots.

    Returns
    -------
    list of int
        Verified rounds, ascending (empty if the address took part in none).

    Raises
    ------
    VerificationError
        If any round fails; its message and ``report.failures`` name each round and why.
    ChainUnavailableError
        If the chain cannot be reached.
    """
    report = verify_bundles(run_dir=run_dir, address=address, contracts=contracts)
    if report.failures:
        raise VerificationError(report)
    return report.verified


@dataclass(slots=True)
class ClaimReport:
    """Outcome of :func:`claim_rewards`.

    Attributes
    ----------
    claimed : dict of int to bytes
        Round → claim transaction hash.
    amounts : dict of int to int
        Round → tokens received.
    skipped : list of int
        Rounds already claimed before, or with an amount of 0.
    failures : dict of int to str
        Rounds not claimed and why (verification or chain errors).
    """

    claimed: dict[int, bytes] = field(default_factory=dict)
    amounts: dict[int, int] = field(default_factory=dict)
    skipped: list[int] = field(default_factory=list)
    failures: dict[int, str] = field(default_factory=dict)

    @property
    def total(self) -> int:
        """Tokens received by this call."""
        return sum(self.amounts.values())


def claim_rewards(
    *, run_dir: str | Path, account: LocalAccount, contracts: Contracts
) -> ClaimReport:
    """Claim every verified, unclaimed round of ``account`` (one transaction per round).

    Rounds already claimed are skipped; rounds that fail verification are not
    claimed and are listed in ``failures``. A chain that becomes unreachable
    raises :class:`ChainUnavailableError`; rerunning claims what is left.
    """
    report = verify_bundles(run_dir=run_dir, address=account.address, contracts=contracts)
    result = ClaimReport(failures=dict(report.failures))
    for round_number in report.verified:
        leaf, proof = report.leaves[round_number]
        if contracts.is_claimed(leaf=leaf):
            result.skipped.append(round_number)
            continue
        if leaf.amount == 0:  # nothing to pay: not worth a transaction
            result.skipped.append(round_number)
            continue
        try:
            tx_hash = contracts.claim(account=account, leaf=leaf, proof=proof)
        except ChainUnavailableError:
            raise
        except ChainError as exc:
            result.failures[round_number] = str(exc)
            continue
        result.claimed[round_number] = tx_hash
        result.amounts[round_number] = leaf.amount
    return result
