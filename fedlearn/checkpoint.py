"""Per-round checkpoints: arrays in ``.npz`` (never pickle) plus JSON metadata.

A checkpoint is written to temporary files and moved into place, and the
``latest.json`` pointer is replaced last, so a SIGKILL at any instant leaves
the previous checkpoint intact.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

__all__ = ["Checkpoint", "load_latest", "save_checkpoint"]

_POINTER = "latest.json"


@dataclass(frozen=True)
class Checkpoint:
    """State after ``round`` completed rounds."""

    round: int
    arrays: dict[str, NDArray[Any]]
    strategy_state: dict[str, NDArray[Any]]
    meta: dict[str, Any]


def _atomic_write(path: Path, write: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("wb") as fh:
        write(fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def save_checkpoint(
    directory: str | Path,
    *,
    round: int,
    arrays: dict[str, NDArray[Any]],
    strategy_state: dict[str, NDArray[Any]],
    meta: dict[str, Any],
) -> Path:
    """Write the checkpoint of ``round`` and point ``latest.json`` at it."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    stem = f"round-{round:05d}"
    payload = {f"model/{k}": v for k, v in arrays.items()}
    payload.update({f"strategy/{k}": v for k, v in strategy_state.items()})

    def write_arrays(fh: Any) -> None:
        np.savez(fh, **payload)  # type: ignore[arg-type]

    _atomic_write(directory / f"{stem}.npz", write_arrays)
    body = json.dumps({"round": round, "arrays": f"{stem}.npz", "meta": meta}, indent=2)
    _atomic_write(directory / f"{stem}.json", lambda fh: fh.write(body.encode()))
    _atomic_write(directory / _POINTER, lambda fh: fh.write(json.dumps({"latest": stem}).encode()))
    return directory / f"{stem}.json"


def load_latest(directory: str | Path) -> Checkpoint | None:
    """Load the newest complete checkpoint, or ``None`` if there is none."""
    directory = Path(directory)
    pointer = directory / _POINTER
    if not pointer.exists():
        return None
    stem = json.loads(pointer.read_text(encoding="utf-8"))["latest"]
    info = json.loads((directory / f"{stem}.json").read_text(encoding="utf-8"))
    with np.load(directory / info["arrays"], allow_pickle=False) as archive:
        arrays = {k[6:]: archive[k] for k in archive.files if k.startswith("model/")}
        state = {k[9:]: archive[k] for k in archive.files if k.startswith("strategy/")}
    return Checkpoint(
        round=int(info["round"]), arrays=arrays, strategy_state=state, meta=info["meta"]
    )
