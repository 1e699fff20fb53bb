"""Contribution attestations on an EVM chain, Merkle proofs and token rewards."""

__all__: list[str] = []
