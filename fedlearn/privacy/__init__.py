"""Differential privacy (local DP-SGD, central and distributed DP), the privacy ledger,
and secure aggregation."""

__all__: list[str] = []
