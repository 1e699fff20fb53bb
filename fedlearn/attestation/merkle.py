"""Merkle trees compatible with OpenZeppelin's ``MerkleProof`` and ``StandardMerkleTree``.

The tree is built exactly as ``@openzeppelin/merkle-tree``'s ``StandardMerkleTree``
builds it, so a root and proofs computed here are the ones a JavaScript tool would
compute from the same leaves, and ``MerkleProof.verify`` in Solidity accepts them:

* inputs are *leaf hashes* (32 bytes each; see
  :func:`fedlearn.attestation.leaves.ContributionLeaf.leaf_hash` for the double
  keccak of the ABI-encoded record that guards against second-preimage attacks);
* leaf hashes are sorted ascending (bytewise), which makes the root independent
  of the order in which clients replied;
* the tree is a complete binary tree stored in an array of ``2n - 1`` nodes with
  the leaves at the end in reverse order; an inner node is
  ``keccak256(min(a, b) ‖ max(a, b))`` ("sorted pairs"), so a proof is a plain
  list of sibling hashes, without left/right flags;
* a single leaf is its own root with an empty proof.

Examples
--------
>>> from eth_utils.crypto import keccak
>>> tree = MerkleTree.from_leaf_hashes([keccak(b"a"), keccak(b"b"), keccak(b"c")])
>>> verify_proof(leaf_hash=keccak(b"b"), proof=tree.proof(keccak(b"b")), root=tree.root)
True
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence

from eth_utils.crypto import keccak
from eth_utils.hexadecimal import encode_hex

from fedlearn.attestation.hexutil import to_bytes32

__all__ = ["MerkleTree", "hash_pair", "process_proof", "verify_proof"]


def hash_pair(a: bytes, b: bytes) -> bytes:
    """``keccak256`` of the two 32-byte hashes concatenated in ascending order."""
    a = to_bytes32("a", a)
    b = to_bytes32("b", b)
    return keccak(a + b) if a <= b else keccak(b + a)


def process_proof(*, leaf_hash: bytes, proof: Sequence[bytes]) -> bytes:
    """The root implied by ``leaf_hash`` and ``proof`` (``MerkleProof.processProof``)."""
    computed = to_bytes32("leaf_hash", leaf_hash)
    for index, sibling in enumerate(proof):
        computed = hash_pair(computed, to_bytes32(f"proof[{index}]", sibling))
    return computed


def verify_proof(*, leaf_hash: bytes, proof: Sequence[bytes], root: bytes) -> bool:
    """Whether ``proof`` proves ``leaf_hash`` under ``root`` (``MerkleProof.verify``)."""
    return process_proof(leaf_hash=leaf_hash, proof=proof) == to_bytes32("root", root)


class MerkleTree:
    """A sorted-pair Merkle tree over distinct 32-byte leaf hashes.

    Build it with :meth:`from_leaf_hashes`. Duplicate leaf hashes are refused:
    two identical records in one round would be one claim on chain (the pool
    marks a leaf as claimed), so they signal a bug upstream.

    Attributes
    ----------
    leaves : tuple of bytes
        The leaf hashes in tree order (ascending).
    root : bytes
        The 32-byte root, as posted on chain.
    """

    __slots__ = ("_index", "_nodes", "leaves")

    def __init__(self, *, nodes: Sequence[bytes], leaves: Sequence[bytes]) -> None:
        self._nodes = tuple(nodes)
        self.leaves = tuple(leaves)
        self._index = {leaf: i for i, leaf in enumerate(self.leaves)}

    @classmethod
    def from_leaf_hashes(cls, leaf_hashes: Iterable[bytes]) -> MerkleTree:
        """Build the tree.

        Parameters
        ----------
        leaf_hashes : iterable of bytes
            Distinct 32-byte leaf hashes, in any order (they are sorted).

        Raises
        ------
        ValueError
            If there are no leaves, a leaf is not 32 bytes, or two are equal.
        """
        leaves = sorted(to_bytes32(f"leaf {i}", h) for i, h in enumerate(leaf_hashes))
        if not leaves:
            raise ValueError("a Merkle tree needs at least one leaf")
        for previous, current in itertools.pairwise(leaves):
            if previous == current:
                raise ValueError(f"duplicate leaf hash {encode_hex(current)}")
        size = 2 * len(leaves) - 1
        nodes: list[bytes] = [b""] * size
        for i, leaf in enumerate(leaves):
            nodes[size - 1 - i] = leaf
        for i in range(size - 1 - len(leaves), -1, -1):
            nodes[i] = hash_pair(nodes[2 * i + 1], nodes[2 * i + 2])
        return cls(nodes=nodes, leaves=leaves)

    @property
    def root(self) -> bytes:
        """The root hash."""
        return self._nodes[0]

    def __len__(self) -> int:
        return len(self.leaves)

    def __contains__(self, leaf_hash: object) -> bool:
        return leaf_hash in self._index

    def proof(self, leaf_hash: bytes) -> list[bytes]:
        """Sibling hashes from ``leaf_hash`` up to the root.

        Raises
        ------
        KeyError
            If ``leaf_hash`` is not a leaf of this tree.
        """
        leaf_hash = to_bytes32("leaf_hash", leaf_hash)
        if leaf_hash not in self._index:
            raise KeyError(f"{encode_hex(leaf_hash)} is not a leaf of this tree")
        node = len(self._nodes) - 1 - self._index[leaf_hash]
        siblings: list[bytes] = []
        while node > 0:
            siblings.append(self._nodes[node + 1 if node % 2 == 1 else node - 1])
            node = (node - 1) // 2
        return siblings
