"""Holder identities: signed statements, fingerprints, and pins kept across runs."""

from __future__ import annotations

import logging
import stat
from pathlib import Path

import pytest
from flwr.app import Context, RecordDict

from fedlearn.privacy.secure.identity import (
    HolderIdentity,
    IdentityError,
    IdentityPins,
    PinMismatchError,
    fingerprint,
    node_identity,
    pin_holders,
    save_node_pins,
    statement,
    verify,
)


def _context(run_id: int, **node_config: object) -> Context:
    return Context(
        run_id=run_id, node_id=7, node_config=dict(node_config), state=RecordDict(), run_config={}
    )


def test_statements_are_unambiguous_and_signatures_bind_them() -> None:
    alice = HolderIdentity.generate("alice")
    assert statement("p", a="bc") != statement("p", ab="c")
    assert statement("p", a="b") != statement("q", a="b")
    assert statement("p", n=1) != statement("p", n="\x00" * 7 + "\x01")
    message = statement("ckks-registration", run=1, name="alice", key=b"\x01" * 32)
    verify(alice.public, message, alice.sign(message))
    with pytest.raises(IdentityError, match="does not verify"):
        verify(alice.public, message + b"x", alice.sign(message))
    with pytest.raises(IdentityError, match="does not verify"):
        verify(HolderIdentity.generate("bob").public, message, alice.sign(message))
    with pytest.raises(IdentityError, match="64 bytes"):
        verify(alice.public, message, b"short")
    with pytest.raises(TypeError, match="booleans"):
        statement("p", flag=True)
    with pytest.raises(ValueError, match=r"\[0, 2\*\*64\)"):
        statement("p", n=-1)


def test_fingerprints_are_stable_and_readable() -> None:
    alice = HolderIdentity.generate("alice")
    assert alice.fingerprint == fingerprint(alice.public)
    assert alice.fingerprint.startswith("ed25519:") and len(alice.fingerprint.split()) == 10
    assert fingerprint(HolderIdentity.generate("alice").public) != alice.fingerprint
    assert alice._private.hex() not in repr(alice)


def test_pins_refuse_a_changed_key_or_a_renamed_key_loudly(
    caplog: pytest.LogCaptureFixture,
) -> None:
    alice, mallory = HolderIdentity.generate("alice"), HolderIdentity.generate("alice")
    pins = IdentityPins()
    assert pins.check("alice", alice.public) is True
    assert pins.check("alice", alice.public) is False
    with caplog.at_level(logging.ERROR), pytest.raises(PinMismatchError, match="pinned to"):
        pins.check("alice", mallory.public)
    assert alice.fingerprint in caplog.text and mallory.fingerprint in caplog.text
    with pytest.raises(PinMismatchError, match="pinned as holder 'alice', not 'bob'"):
        pins.check("bob", alice.public)
    closed = IdentityPins(accept_new=False, pins=pins.pins)
    assert closed.check("alice", alice.public) is False
    with pytest.raises(IdentityError, match="accepts no new holders"):
        closed.check("carol", HolderIdentity.generate("carol").public)


def test_a_real_holders_identity_and_pins_persist_across_runs(tmp_path: Path) -> None:
    directory = tmp_path / "me"
    first_identity, pins = node_identity(_context(11, **{"identity-dir": str(directory)}))
    assert first_identity.name == "holder-" + first_identity.fingerprint[8:].replace(" ", "")[:12]
    key_file = directory / "ckks-identity.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    bob = HolderIdentity.generate("bob")
    assert pins.accept_new  # the first run: trust on first use
    pins.check("bob", bob.public)
    pins.save()
    assert stat.S_IMODE((directory / "ckks-pins.json").stat().st_mode) == 0o600
    # Same run again (another message): the same key, the window still open.
    again, pins = node_identity(_context(11, **{"identity-dir": str(directory)}))
    assert again.public == first_identity.public and pins.accept_new
    # The next run: the same key, bob still known, new holders refused by default ...
    later, pins = node_identity(_context(12, **{"identity-dir": str(directory)}))
    assert later.public == first_identity.public and not pins.accept_new
    assert pins.check("bob", bob.public) is False
    with pytest.raises(IdentityError, match="accepts no new holders"):
        pins.check("carol", HolderIdentity.generate("carol").public)
    with pytest.raises(PinMismatchError):
        pins.check("bob", HolderIdentity.generate("bob").public)
    # ... unless the holder's policy is to pin new holders in every run.
    _, pins = node_identity(
        _context(12, **{"identity-dir": str(directory), "ckks-new-holders": "pin"})
    )
    assert pins.accept_new


def test_a_pinned_registration_list_leaves_no_first_use_window(tmp_path: Path) -> None:
    bob, carol = HolderIdentity.generate("bob"), HolderIdentity.generate("carol")
    pin_holders(
        tmp_path / "me" / "ckks-pins.json", {"bob": bob.public, "carol": carol.public.hex()}
    )
    _, pins = node_identity(_context(1, **{"identity-dir": str(tmp_path / "me")}))
    assert not pins.accept_new
    assert pins.check("bob", bob.public) is False
    with pytest.raises(IdentityError, match="accepts no new holders"):
        pins.check("dave", HolderIdentity.generate("dave").public)
    _, pins = node_identity(
        _context(1, **{"identity-dir": str(tmp_path / "x"), "ckks-new-holders": "refuse"})
    )
    assert not pins.accept_new  # refuse: no window even in the first run
    with pytest.raises(IdentityError, match="ckks-new-holders must be"):
        node_identity(_context(1, **{"ckks-new-holders": "sometimes"}))


def test_names_and_where_the_key_lives(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    named, _ = node_identity(_context(1, **{"identity-dir": str(tmp_path), "holder-name": "h"}))
    assert named.name == "h"
    partition, _ = node_identity(_context(1, **{"identity-dir": str(tmp_path), "partition-id": 3}))
    assert partition.name == "partition-3" and partition.public == named.public
    # A real holder's SuperNode (it reads a data file) keeps its key in its own home ...
    monkeypatch.setenv("FLWR_HOME", str(tmp_path / "node"))
    real, _ = node_identity(_context(1, **{"data-path": "/data.csv"}))
    assert (tmp_path / "node" / "fedlearn-identity" / "ckks-identity.key").exists()
    # ... or, without one, in FEDLEARN_HOME.
    monkeypatch.delenv("FLWR_HOME")
    monkeypatch.setenv("FEDLEARN_HOME", str(tmp_path / "home"))
    assert node_identity(_context(1, **{"data-path": "/d.csv"}))[0].public != real.public
    assert (tmp_path / "home" / "identity" / "ckks-identity.key").exists()
    # A simulated holder: a key per run in the node state, and pins there too.
    context = _context(1, **{"partition-id": 0})
    simulated, pins = node_identity(context)
    assert simulated.public not in (real.public, named.public)
    pins.check("bob", HolderIdentity.generate("bob").public)
    save_node_pins(context, pins)
    again, pins = node_identity(context)
    assert again.public == simulated.public and "bob" in pins.pins
    other, _ = node_identity(_context(1, **{"partition-id": 0}))
    assert other.public != simulated.public
