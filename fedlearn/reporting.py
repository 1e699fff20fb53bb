"""What users see: a progress bar per round and the round table (rich)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from fedlearn.history import History, RoundRecord
from fedlearn.server_app import RoundCallback

if TYPE_CHECKING:
    from fedlearn.demo import HolderClaim
    from fedlearn.privacy.holder import DataSpending

__all__ = ["budget_table", "claims_table", "contribution_table", "round_progress", "round_table"]


def _fmt(value: float | None, spec: str = ".4f") -> str:
    return "–" if value is None else format(value, spec)


def _bytes(n: int) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000  # type: ignore[assignment]
    raise AssertionError("unreachable")


@contextmanager
def round_progress(console: Console, *, rounds: int, first: int = 0) -> Iterator[RoundCallback]:
    """A progress bar over the rounds; yields the callback that advances it."""
    progress = Progress(
        TextColumn("[bold]federated rounds"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[status]}"),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    )
    task = progress.add_task("rounds", total=rounds, completed=first, status="starting engine…")

    def on_round(record: RoundRecord) -> None:
        accuracy = record.accuracy if record.accuracy is not None else record.federated_accuracy
        progress.update(
            task,
            completed=record.round,
            status=f"acc {_fmt(accuracy, '.3f')}  {record.accepted}/{record.sampled} clients",
        )

    with progress:
        yield on_round


def round_table(history: History, *, title: str = "Rounds") -> Table:
    """The round table: round, accuracy, loss, time, bytes, clients."""
    table = Table(title=title)
    private = any(r.privacy for r in history.rounds)
    central = any(r.central_privacy for r in history.rounds)
    columns = ["round", "accuracy", "loss", "fed. acc.", "time (s)", "bytes sent", "clients"]
    columns += ["ε client (max)"] if private else []
    columns += ["ε central"] if central else []
    secure = any(r.secure for r in history.rounds)
    attested = any(r.attestation for r in history.rounds)
    columns += ["secure"] if secure else []
    columns += ["chain"] if attested else []
    for name in columns:
        table.add_column(name, justify="right")
    for r in history.rounds:
        clients = f"{r.accepted}/{r.sampled}" + ("" if r.applied else " (skipped)")
        row = [
            str(r.round),
            _fmt(r.accuracy),
            _fmt(r.loss),
            _fmt(r.federated_accuracy),
            f"{r.seconds:.2f}",
            _bytes(r.bytes_sent + r.bytes_received),
            clients,
        ]
        if private:
            row.append(_fmt(r.max_client_epsilon, ".3f"))
        if central:
            row.append(_fmt(r.central_privacy.get("epsilon"), ".3f"))
        if secure:
            row.append(
                f"{r.secure.get('mode', '–')} ({r.secure.get('contributors', 0)})"
                if r.secure
                else "–"
            )
        if attested:
            row.append(_chain_status(r))
        table.add_row(*row)
    return table


def _chain_status(record: RoundRecord) -> str:
    if not record.attestation:
        return "–"
    if record.attestation.get("confirmed"):
        return "confirmed"
    return "outbox" if not record.attestation.get("error") else "outbox (chain down)"


def contribution_table(history: History, *, decimals: int = 18) -> Table:
    """One row per attested client: rounds, scores, ε and the reward it can claim."""
    table = Table(title="Contributions (attested on chain)")
    for name in ("client", "rounds", "mean score", "last score", "ε", "reward (FLR)"):
        table.add_column(name, justify="left" if name == "client" else "right")
    clients: dict[str, list[dict[str, object]]] = {}
    method = ""
    for record in history.rounds:
        method = str(record.attestation.get("scoring", method))
        for entry in record.contributions.values():
            clients.setdefault(str(entry["address"]), []).append(entry)
    for address, entries in sorted(clients.items()):
        scores = [float(e["score"]) for e in entries]  # type: ignore[arg-type]
        reward = sum(int(str(e["reward"])) for e in entries) / 10**decimals
        epsilon = entries[-1].get("epsilon")
        table.add_row(
            f"{address[:10]}…{address[-4:]}",
            str(len(entries)),
            f"{sum(scores) / len(scores):.4g}",
            f"{scores[-1]:.4g}",
            "–" if epsilon is None else f"{float(epsilon):.3f}",  # type: ignore[arg-type]
            f"{reward:,.2f}",
        )
    table.caption = f"scores: {method}"
    return table


def claims_table(claims: Sequence[HolderClaim]) -> Table:
    """One row per simulated holder: its verified rounds, what it claimed, its balance."""
    table = Table(title="Each data holder verifies its proofs on chain and claims")
    rows = [claim.to_row() for claim in claims]
    for name in rows[0] if rows else ():
        table.add_column(name, justify="right")
    for row in rows:
        table.add_row(*(str(value) for value in row.values()))
    return table


def budget_table(
    spending: DataSpending, *, data: str, epsilon_budget: float | None = None
) -> Table:
    """A holder's spending on one file's records: one row per release, then the total."""
    table = Table(title=f"privacy spent on {data} ({spending.records} records)")
    for name in ("run", "round", "records used", "ε of the round", "ε after (max record)"):
        table.add_column(name, justify="left" if name == "run" else "right")
    for release, used in spending.releases:
        table.add_row(
            release.run[:12],
            str(release.round),
            str(used),
            _fmt(release.round_epsilon),
            _fmt(release.epsilon),
        )
    delta = "" if not spending.releases else f" at δ = {spending.delta:g}"
    table.caption = f"spent: ε = {spending.spent:.4f}{delta} (the most any record has spent)"
    if epsilon_budget is not None:
        table.caption += (
            f"; remaining of ε = {epsilon_budget:g}: {epsilon_budget - spending.spent:.4f}"
        )
    return table
