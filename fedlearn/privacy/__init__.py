"""Differential privacy, the privacy ledger and secure aggregation."""

__all__: list[str] = []
