"""A run's history: one record per round, saved as JSON, plotted with matplotlib."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["History", "RoundRecord"]


@dataclass
class RoundRecord:
    """What one round did.

    ``accuracy``/``loss`` are measured by the server on held-out data when it
    has some; ``federated_accuracy``/``federated_loss`` are the example-weighted
    means the clients report on their own local validation data. ``privacy``
    holds each client's privacy-ledger entry for the round (ε spent so far,
    this round's ε, δ, noise multiplier, clipping norm, sampling rate, steps),
    keyed ``"<client>@node<node id>"``, and ``central_privacy`` the server's
    for user-level DP. ``secure`` says what secure aggregation did: mode,
    clients in the sum, clients dropped by the protocol (and why), an abort
    reason, and the seconds its set-up and aggregation stages took.
    ``contributions`` holds each attested client's score, capped examples,
    ε and reward (token base units), keyed ``"node<node id>"``, and
    ``attestation`` the round's Merkle root, aggregate hash, scoring method
    and whether the chain confirmed it yet.
    """

    round: int
    accuracy: float | None = None
    loss: float | None = None
    federated_accuracy: float | None = None
    federated_loss: float | None = None
    train_loss: float | None = None
    sampled: int = 0
    accepted: int = 0
    rejected: dict[str, str] = field(default_factory=dict)
    applied: bool = True
    seconds: float = 0.0
    bytes_sent: int = 0
    bytes_received: int = 0
    privacy: dict[str, dict[str, float]] = field(default_factory=dict)
    central_privacy: dict[str, float] = field(default_factory=dict)
    secure: dict[str, Any] = field(default_factory=dict)
    contributions: dict[str, dict[str, Any]] = field(default_factory=dict)
    attestation: dict[str, Any] = field(default_factory=dict)

    @property
    def max_client_epsilon(self) -> float | None:
        """The largest cumulative ε any client reported after this round."""
        values = [p["epsilon"] for p in self.privacy.values() if "epsilon" in p]
        return max(values) if values else None


@dataclass
class History:
    """All rounds of a run, plus figures measured around it (e.g. a centralized baseline)."""

    rounds: list[RoundRecord] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)

    def append(self, record: RoundRecord) -> None:
        """Add a round (rounds are kept in order, one record per round)."""
        if self.rounds and record.round <= self.rounds[-1].round:
            raise ValueError(f"round {record.round} is not after round {self.rounds[-1].round}")
        self.rounds.append(record)

    @property
    def final_accuracy(self) -> float | None:
        """Last round's accuracy (server-side if measured, else federated)."""
        for rec in reversed(self.rounds):
            if rec.accuracy is not None:
                return rec.accuracy
            if rec.federated_accuracy is not None:
                return rec.federated_accuracy
        return None

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able mapping."""
        return {"rounds": [asdict(r) for r in self.rounds], "summary": self.summary}

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> History:
        """Inverse of :meth:`to_dict`."""
        return cls(
            rounds=[RoundRecord(**r) for r in raw.get("rounds", [])],
            summary=dict(raw.get("summary", {})),
        )

    def save(self, path: str | Path) -> Path:
        """Write JSON atomically (a crash never leaves a half-written file)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=2), encoding="utf-8")
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> History:
        """Read a history written by :meth:`save`."""
        return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))

    def plot(self, path: str | Path | None = None) -> Figure:
        """Plot accuracy and loss per round; save to ``path`` if given."""
        import matplotlib

        if path is not None:
            matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        private = [r for r in self.rounds if r.privacy or r.central_privacy]
        fig, axes = plt.subplots(1, 3 if private else 2, figsize=(15 if private else 10, 3.8))
        ax_acc, ax_loss = axes[0], axes[1]
        if private:
            ax_eps = axes[2]
            for label, values in (
                ("max over clients (local DP)", [r.max_client_epsilon for r in private]),
                ("aggregate (central DP)", [r.central_privacy.get("epsilon") for r in private]),
            ):
                if any(v is not None for v in values):
                    ys = [float("nan") if v is None else v for v in values]
                    ax_eps.plot([r.round for r in private], ys, "o-", label=label)
            ax_eps.set(xlabel="round", ylabel="ε spent (cumulative)", title="Privacy ledger")
        xs = [r.round for r in self.rounds]
        for attr, label in (("accuracy", "server"), ("federated_accuracy", "federated")):
            ys = [getattr(r, attr) for r in self.rounds]
            if any(y is not None for y in ys):
                ax_acc.plot(xs, [float("nan") if y is None else y for y in ys], "o-", label=label)
        for attr, label in (("loss", "server"), ("train_loss", "train")):
            ys = [getattr(r, attr) for r in self.rounds]
            if any(y is not None for y in ys):
                ax_loss.plot(xs, [float("nan") if y is None else y for y in ys], "o-", label=label)
        baseline = self.summary.get("centralized_accuracy")
        if baseline is not None:
            ax_acc.axhline(baseline, color="grey", linestyle="--", label="centralized")
        from matplotlib.ticker import MaxNLocator

        ax_acc.set(xlabel="round", ylabel="accuracy", title="Accuracy")
        ax_loss.set(xlabel="round", ylabel="loss", title="Loss")
        for ax in axes:
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.grid(alpha=0.3)
            ax.legend()
        fig.tight_layout()
        if path is not None:
            fig.savefig(path, dpi=120)
        return fig
