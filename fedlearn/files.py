"""Writing files safely, and where a run keeps its secrets.

Two rules every writer of a secret follows:

* **No window.** A secret is never readable by others, not even for the
  instant between creating a file and setting its mode: it is written to a
  temporary file created with ``mode`` (0600) and only then given its name
  (:func:`write_atomically` replaces, :func:`create_atomically` creates once).
* **Apart from what is published.** A run directory holds what anyone may
  read (attestation bundles, contract addresses, the embedded chain's
  journal, certificates) next to what nobody but the operator may read. The
  second kind lives only under ``RUN_DIR/secrets/`` (mode 0700,
  :func:`run_secrets`), so publishing a run is copying the directories that
  are not ``secrets/``, and a reader that verifies a run never needs it.

``RUN_DIR/secrets/`` holds::

    coordinator.key   the embedded chain's development coordinator key
    wallets.secret    the simulated holders' wallet seed (simulation only)
    tls/ca.key        the federation CA's key (renews the server certificate)
    tls/server.key    the SuperLink's TLS key
"""

from __future__ import annotations

import logging
import os
import stat
import tempfile
from pathlib import Path

__all__ = [
    "SECRETS_DIR",
    "create_atomically",
    "private_directory",
    "run_secrets",
    "write_atomically",
]

log = logging.getLogger(__name__)

#: The run directory's folder for secrets (mode 0700); nothing in it is ever published.
SECRETS_DIR = "secrets"


def _temporary(path: Path, data: bytes, mode: int) -> str:
    """A fsynced temporary file beside ``path`` holding ``data``, created with ``mode``."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, mode)  # mkstemp creates 0600; a wider mode is asked for explicitly
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return tmp


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _install(path: Path, data: bytes, mode: int, *, replace: bool) -> bool:
    """Give a complete temporary file with ``data`` the name ``path`` (see the callers)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temporary(path, data, mode)
    try:
        if replace:
            os.replace(tmp, path)
        else:
            os.link(tmp, path)  # fails if path exists: never replaces
    except FileExistsError:
        return False
    finally:
        Path(tmp).unlink(missing_ok=True)
    _fsync_directory(path.parent)
    return True


def write_atomically(path: Path, data: bytes, *, mode: int = 0o600) -> None:
    """Replace ``path`` with ``data`` so a crash leaves the old or the new file, never half.

    The file is created with ``mode`` from the start (no window in which a
    secret is readable by others), fsynced, renamed over ``path``, and the
    directory is fsynced so the rename itself survives a power loss.
    """
    _install(path, data, mode, replace=True)


def create_atomically(path: Path, data: bytes, *, mode: int = 0o600) -> bool:
    """Create ``path`` holding ``data`` unless it exists; ``True`` if this call created it.

    Unlike an ``O_EXCL`` open followed by a write, nobody can see the file
    half written: the complete temporary file (created with ``mode``) is
    hard-linked to ``path``, which fails if ``path`` exists. So concurrent
    creators (e.g. simulated clients in several processes) agree on one
    content: exactly one wins, the others read the winner's file.
    """
    return _install(path, data, mode, replace=False)


def private_directory(path: Path) -> Path:
    """``path`` as a directory only its owner can enter (0700), created if missing.

    An existing directory that others can read or enter is tightened to 0700
    (a warning says so); its files were written 0600 in any case.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        path.mkdir(mode=0o700)
    except FileExistsError:
        if not path.is_dir():
            raise
        if stat.S_IMODE(path.stat().st_mode) & 0o077:
            log.warning("%s was readable by others; restricting it to its owner (0700)", path)
            os.chmod(path, 0o700)
    return path


def run_secrets(run_dir: Path) -> Path:
    """``RUN_DIR/secrets`` (mode 0700, created if missing): where a run's secrets live."""
    return private_directory(Path(run_dir) / SECRETS_DIR)
