"""Read a run directory for the report: every file is optional and untrusted.

A run directory may be complete, in progress (``history.json`` holds the rounds
done so far, or does not exist yet), failed, or damaged. Nothing here raises
on what it reads: a file that is missing is simply absent from the view, a
file that cannot be parsed adds a line to :attr:`RunView.problems` (shown on
the page), and every value is type-checked where it is used (``number``,
``integer``, ``text``), because the page must render whatever the files say.

Only light modules are imported (no torch, Flower or web3): the report must be
quick to write at the end of a run and from the command line.
"""

from __future__ import annotations

import json
import math
import re
import sqlite3
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "TOKEN_DECIMALS",
    "Contribution",
    "Holder",
    "OutboxRow",
    "RunView",
    "integer",
    "number",
    "read_run",
    "text",
]

#: Decimals of the reward token. Equal to ``fedlearn.attestation.session.TOKEN_DECIMALS``
#: (a test checks); not imported from there because that module loads web3.
TOKEN_DECIMALS = 18
_BUNDLE_FORMAT = "fedlearn.attestation.bundle/1"
_BUNDLE_FILE = re.compile(r"^round-(\d{1,12})\.json$")
_PRIVACY_KEY = re.compile(r"^(?P<client>.*)@node(?P<node>\d+)$")
_CONTRIBUTION_KEY = re.compile(r"^node(?P<node>\d+)$")
#: Files larger than this are not read (a report must not hang on a hostile file).
_MAX_BYTES = 64 * 1024 * 1024


def number(value: object) -> float | None:
    """``value`` as a finite float, else None (bools, strings, NaN and ∞ are not numbers)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    result = float(value)
    return result if math.isfinite(result) else None


def integer(value: object) -> int | None:
    """``value`` as an int (ints and decimal strings, e.g. token amounts), else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 80:
        return int(value)
    return None


def text(value: object) -> str:
    """``value`` as a string for display ("" for None); the page escapes it."""
    return "" if value is None else str(value)


def _mapping(value: object) -> dict[str, Any]:
    return {str(k): v for k, v in value.items()} if isinstance(value, Mapping) else {}


@dataclass
class Contribution:
    """One holder's attested record of one round, as ``history.json`` holds it."""

    score: float | None
    examples: int | None
    epsilon: float | None
    reward: int | None  # token base units


@dataclass
class Holder:
    """A data holder, identified by its Flower node id."""

    node: str
    name: str = ""  # what the holder calls itself in its privacy report (untrusted)
    address: str = ""
    epsilon: dict[int, float] = field(default_factory=dict)  # round -> cumulative ε
    contributions: dict[int, Contribution] = field(default_factory=dict)

    @property
    def label(self) -> str:
        """Short name for legends and tables."""
        return f"holder {self.name}" if self.name else f"node {self.node}"

    @property
    def reward(self) -> int:
        """Total reward over the run, base units."""
        return sum(c.reward or 0 for c in self.contributions.values())

    def is_address(self, address: str | None) -> bool:
        """Whether ``address`` (any letter case) is this holder's wallet."""
        return bool(address) and self.address.lower() == str(address).strip().lower()


@dataclass
class OutboxRow:
    """A round's entry in ``attestations/outbox.sqlite`` (what the chain confirmed)."""

    round: int
    root: str
    status: str
    tx_hash: str
    block: int | None
    attempts: int | None
    error: str


@dataclass
class RunView:
    """Everything the report shows, read once from a run directory."""

    run_dir: Path
    status: dict[str, Any] = field(default_factory=dict)
    rounds: list[dict[str, Any]] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)
    config: dict[str, dict[str, Any]] = field(default_factory=dict)
    holders: dict[str, Holder] = field(default_factory=dict)
    bundles: dict[int, dict[str, Any]] = field(default_factory=dict)
    outbox: dict[int, OutboxRow] = field(default_factory=dict)
    deployment: dict[str, Any] = field(default_factory=dict)
    run_id: str = ""
    problems: list[str] = field(default_factory=list)

    def setting(self, section: str, key: str) -> object:
        """A value of ``config.toml`` (None if absent)."""
        return self.config.get(section, {}).get(key)

    @property
    def state(self) -> str:
        """``completed``, ``running``, ``failed`` or ``unknown``."""
        state = text(self.status.get("state"))
        return state if state in ("completed", "running", "failed") else "unknown"

    @property
    def planned_rounds(self) -> int | None:
        """Rounds the config plans (None without a config)."""
        planned = integer(self.setting("federation", "rounds"))
        return planned if planned is not None and planned > 0 else None

    @property
    def attested(self) -> bool:
        """Whether the run attests its rounds."""
        return (
            self.setting("attestation", "enabled") is True
            or bool(self.bundles)
            or bool(self.outbox)
            or any(_mapping(r.get("attestation")) for r in self.rounds)
        )

    def holder_of(self, address: str | None) -> Holder | None:
        """The holder whose wallet is ``address``."""
        return next((h for h in self.holders.values() if h.is_address(address)), None)


def _read_text(path: Path, view: RunView) -> str | None:
    try:
        if not path.is_file():
            return None
        if path.stat().st_size > _MAX_BYTES:
            view.problems.append(f"{path.name} is larger than {_MAX_BYTES} bytes; not read")
            return None
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        view.problems.append(f"{path.name} could not be read: {exc}")
        return None


def _read_json(path: Path, view: RunView) -> Any:
    raw = _read_text(path, view)
    if raw is None:
        return None
    try:
        return json.loads(raw)
    except ValueError as exc:
        view.problems.append(f"{path.relative_to(view.run_dir)} is not valid JSON: {exc}")
        return None


def _read_history(view: RunView) -> None:
    raw = _read_json(view.run_dir / "history.json", view)
    if raw is None:
        return
    if not isinstance(raw, Mapping):
        view.problems.append("history.json does not hold an object")
        return
    view.summary = _mapping(raw.get("summary"))
    rounds = raw.get("rounds")
    by_round: dict[int, dict[str, Any]] = {}
    for entry in rounds if isinstance(rounds, list) else []:
        record = _mapping(entry)
        number_ = integer(record.get("round"))
        if number_ is None or number_ < 0:
            view.problems.append("history.json holds a round record without a round number")
            continue
        record["round"] = number_
        by_round[number_] = record  # one record per round: the last one wins
    view.rounds = [by_round[r] for r in sorted(by_round)]


def _read_config(view: RunView) -> None:
    raw = _read_text(view.run_dir / "config.toml", view)
    if raw is None:
        return
    try:
        parsed = tomllib.loads(raw)
    except tomllib.TOMLDecodeError as exc:
        view.problems.append(f"config.toml is not valid TOML: {exc}")
        return
    view.config = {name: _mapping(values) for name, values in parsed.items()}


def _holder(view: RunView, node: str) -> Holder:
    return view.holders.setdefault(node, Holder(node=node))


def _collect_holders(view: RunView) -> None:
    for record in view.rounds:
        round_ = int(record["round"])
        for key, entry in _mapping(record.get("privacy")).items():
            match = _PRIVACY_KEY.match(key)
            holder = _holder(view, match["node"] if match else key)
            if match:
                holder.name = match["client"]
            epsilon = number(_mapping(entry).get("epsilon"))
            if epsilon is not None:
                holder.epsilon[round_] = epsilon
        for key, raw in _mapping(record.get("contributions")).items():
            match = _CONTRIBUTION_KEY.match(key)
            entry = _mapping(raw)
            holder = _holder(view, match["node"] if match else key)
            holder.address = text(entry.get("address")) or holder.address
            holder.contributions[round_] = Contribution(
                score=number(entry.get("score")),
                examples=integer(entry.get("examples")),
                epsilon=number(entry.get("epsilon")),
                reward=integer(entry.get("reward")),
            )
    addresses = _read_json(view.run_dir / "attestations" / "addresses.json", view)
    for node, address in _mapping(addresses).items():
        if node in view.holders and not view.holders[node].address:
            view.holders[node].address = text(address)


def _read_bundles(view: RunView) -> None:
    directory = view.run_dir / "attestations"
    try:
        names = sorted(p.name for p in directory.iterdir()) if directory.is_dir() else []
    except OSError as exc:
        view.problems.append(f"attestations/ could not be listed: {exc}")
        return
    for name in names:
        match = _BUNDLE_FILE.match(name)
        if not match:
            continue
        bundle = _read_json(directory / name, view)
        if not isinstance(bundle, Mapping) or bundle.get("format") != _BUNDLE_FORMAT:
            if bundle is not None:
                view.problems.append(f"attestations/{name} is not a {_BUNDLE_FORMAT} bundle")
            continue
        view.bundles[int(match.group(1))] = _mapping(bundle)
    run_id = _read_text(directory / "run-id", view)
    view.run_id = "0x" + run_id.strip() if run_id and run_id.strip() else ""
    view.deployment = _mapping(_read_json(directory / "deployment.json", view))


def _read_outbox(view: RunView) -> None:
    path = view.run_dir / "attestations" / "outbox.sqlite"
    if not path.is_file():
        return
    try:
        # Read-only: a running server may hold the database; never change it.
        db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=2.0)
        try:
            rows = db.execute(
                "SELECT round, root, status, tx_hash, block_number, attempts, last_error "
                "FROM attestations ORDER BY round"
            ).fetchall()
        finally:
            db.close()
    except sqlite3.Error as exc:
        view.problems.append(f"attestations/outbox.sqlite could not be read: {exc}")
        return
    for round_, root, status, tx_hash, block, attempts, error in rows:
        if integer(round_) is None:
            continue
        view.outbox[int(round_)] = OutboxRow(
            round=int(round_),
            root=text(root),
            status=text(status),
            tx_hash=text(tx_hash),
            block=integer(block),
            attempts=integer(attempts),
            error=text(error),
        )


def read_run(run_dir: str | Path) -> RunView:
    """Read what the run directory holds; never raises on its contents."""
    view = RunView(run_dir=Path(run_dir))
    if not view.run_dir.is_dir():
        view.problems.append(f"{view.run_dir} is not a directory")
        return view
    view.status = _mapping(_read_json(view.run_dir / "status.json", view))
    for step in (_read_history, _read_config, _collect_holders, _read_bundles, _read_outbox):
        try:
            step(view)
        except Exception as exc:  # a damaged file must not stop the rest of the page
            view.problems.append(f"{step.__name__.lstrip('_')}: {type(exc).__name__}: {exc}")
    return view
