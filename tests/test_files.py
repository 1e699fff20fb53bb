"""Secrets are written private from the first byte, once, in private folders."""

from __future__ import annotations

import multiprocessing
import os
import stat
from pathlib import Path

from fedlearn.files import create_atomically, private_directory, run_secrets, write_atomically


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_writes_are_private_from_the_start_and_leave_no_temporary(tmp_path: Path) -> None:
    old = os.umask(0)  # even a permissive umask gives no window
    try:
        write_atomically(tmp_path / "a" / "key", b"1")
        assert create_atomically(tmp_path / "b" / "key", b"2")
        write_atomically(tmp_path / "public", b"3", mode=0o644)
    finally:
        os.umask(old)
    assert _mode(tmp_path / "a" / "key") == _mode(tmp_path / "b" / "key") == 0o600
    assert _mode(tmp_path / "public") == 0o644
    assert [p.name for p in (tmp_path / "b").iterdir()] == ["key"]


def test_create_atomically_never_replaces(tmp_path: Path) -> None:
    path = tmp_path / "key"
    assert create_atomically(path, b"first")
    assert not create_atomically(path, b"second")
    assert path.read_bytes() == b"first"
    assert [p.name for p in tmp_path.iterdir()] == ["key"]


def _create(path: str) -> bytes:
    create_atomically(Path(path), os.urandom(32))
    return Path(path).read_bytes()


def test_concurrent_creators_agree_on_one_complete_secret(tmp_path: Path) -> None:
    path = str(tmp_path / "wallets.secret")
    with multiprocessing.get_context("spawn").Pool(4) as pool:
        seen = pool.map(_create, [path] * 16)
    assert len(set(seen)) == 1 and len(seen[0]) == 32  # nobody read it half written


def test_private_directories_are_owner_only(tmp_path: Path) -> None:
    secrets = run_secrets(tmp_path / "run")
    assert secrets == tmp_path / "run" / "secrets" and _mode(secrets) == 0o700
    loose = tmp_path / "loose"
    loose.mkdir(mode=0o755)
    os.chmod(loose, 0o755)
    assert _mode(private_directory(loose)) == 0o700
