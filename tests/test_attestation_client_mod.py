"""The holder's attestation mod: what it signs for, and what it refuses before training."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from eth_account import Account
from eth_utils import to_checksum_address
from flwr.app import ConfigRecord, Context, Message, RecordDict

from fedlearn.attestation.client_mod import (
    PIN_CHAIN_ID,
    PIN_LEDGER,
    make_attestation_mod,
    node_wallet,
    payload_bytes,
)
from fedlearn.attestation.leaves import run_id_from_name
from fedlearn.attestation.signing import SignedCommitment, SigningDomain, check_signed_commitment
from fedlearn.wire import (
    ATTEST_CHAIN_ID_KEY,
    ATTEST_LEDGER_KEY,
    ATTEST_RUN_ID_KEY,
    ATTESTATION_KEY,
    ErrorCode,
)
from tests.flower_messages import instruction

LEDGER = to_checksum_address("0x" + "ab" * 20)
RUN_ID = run_id_from_name("run")
ACCOUNT = Account.create()


def _context(**node_config: Any) -> Context:
    return Context(run_id=1, node_id=7, node_config=node_config, state=RecordDict(), run_config={})


def _request(**fields: Any) -> Message:
    config = {"server-round": 3, ATTEST_RUN_ID_KEY: "0x" + RUN_ID.hex()} | fields
    return instruction(RecordDict({"config": ConfigRecord(config)}), node_id=7)


class _Trainer:
    """The handler inside the mod; counts how often it ran (trained)."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, msg: Message, context: Context) -> Message:
        self.calls += 1
        return Message(RecordDict({"config": ConfigRecord({"update": b"bytes"})}), reply_to=msg)


def test_the_holder_signs_for_the_chain_and_ledger_the_round_names() -> None:
    trainer, mod = _Trainer(), make_attestation_mod(lambda _: ACCOUNT)
    msg = _request(**{ATTEST_CHAIN_ID_KEY: 31337, ATTEST_LEDGER_KEY: LEDGER})
    reply = mod(msg, _context(), trainer)
    assert not reply.has_error() and trainer.calls == 1
    signed = SignedCommitment.from_dict(dict(reply.content.config_records[ATTESTATION_KEY]))
    domain = SigningDomain(chain_id=31337, ledger=LEDGER)
    assert signed.domain == domain
    check_signed_commitment(
        signed=signed,
        domain=domain,
        run_id=RUN_ID,
        expected_round=3,
        payload=payload_bytes(reply.content),
        expected_address=ACCOUNT.address,
    )


@pytest.mark.parametrize(
    "fields",
    [
        {},  # a server that would collect signatures valid in any run on any chain
        {ATTEST_CHAIN_ID_KEY: 31337},
        {ATTEST_LEDGER_KEY: LEDGER},
        {ATTEST_CHAIN_ID_KEY: "31337", ATTEST_LEDGER_KEY: LEDGER},
        {ATTEST_CHAIN_ID_KEY: 31337, ATTEST_LEDGER_KEY: "0x12"},
    ],
)
def test_a_round_without_a_valid_chain_and_ledger_is_refused_before_training(
    fields: dict[str, Any],
) -> None:
    trainer, mod = _Trainer(), make_attestation_mod(lambda _: ACCOUNT)
    reply = mod(_request(**fields), _context(), trainer)
    assert reply.has_error() and reply.error.code == ErrorCode.ATTESTATION
    assert "refused to sign" in reply.error.reason
    assert trainer.calls == 0  # no training, no privacy budget spent


def test_a_holder_that_pinned_its_chain_and_ledger_refuses_others() -> None:
    mod = make_attestation_mod(lambda _: ACCOUNT)
    pinned = _context(**{PIN_CHAIN_ID: 31337, PIN_LEDGER: LEDGER.lower()})
    other_ledger = to_checksum_address("0x" + "cd" * 20)
    for fields, rule in (
        ({ATTEST_CHAIN_ID_KEY: 1, ATTEST_LEDGER_KEY: LEDGER}, PIN_CHAIN_ID),
        ({ATTEST_CHAIN_ID_KEY: 31337, ATTEST_LEDGER_KEY: other_ledger}, PIN_LEDGER),
    ):
        trainer = _Trainer()
        reply = mod(_request(**fields), pinned, trainer)
        assert reply.has_error() and rule in reply.error.reason and trainer.calls == 0
    trainer = _Trainer()
    ok = mod(_request(**{ATTEST_CHAIN_ID_KEY: 31337, ATTEST_LEDGER_KEY: LEDGER}), pinned, trainer)
    assert not ok.has_error() and trainer.calls == 1


def test_a_wallet_failure_tells_the_server_nothing_about_the_holders_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    keystore = tmp_path / "alice-private" / "wallet.json"
    monkeypatch.delenv("FEDLEARN_WALLET_PASSWORD", raising=False)
    mod = make_attestation_mod(node_wallet)
    msg = _request(**{ATTEST_CHAIN_ID_KEY: 31337, ATTEST_LEDGER_KEY: LEDGER})
    reply = mod(msg, _context(**{"wallet-keystore": str(keystore)}), _Trainer())
    assert reply.has_error() and reply.error.code == ErrorCode.ATTESTATION
    assert "wallet is unavailable" in reply.error.reason
    assert "alice" not in reply.error.reason and str(tmp_path) not in reply.error.reason
