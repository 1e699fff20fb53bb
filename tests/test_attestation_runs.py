"""Attested federations: scores, Merkle roots on a real EVM, proofs, claims, outages.

Server loop and ClientApps are fedlearn's real ones, in this process
(:class:`~fedlearn.loopback.LoopbackGrid`); the chain is the embedded py-evm
chain or a real anvil process.
"""

from __future__ import annotations

import functools
import json
import shutil
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from eth_utils import decode_hex, encode_hex
from flwr.app import Context, Message

from fedlearn.attestation.bundle import claim_rewards, verify_client
from fedlearn.attestation.chain import Contracts, EmbeddedChain
from fedlearn.attestation.client_mod import partition_wallet, simulated_wallet, wallet_secret
from fedlearn.attestation.session import PUBLIC_ARTIFACTS, TOKEN_DECIMALS, coordinator_account
from fedlearn.client_app import make_client_app
from fedlearn.config import RunConfig
from fedlearn.history import History
from fedlearn.loopback import DropRule, Handler, LoopbackGrid
from fedlearn.server_app import run_federation, server_test_set
from tests.anvil import Anvil
from tests.flower_messages import serverapp_identity

CLIENTS = 4
NODES = list(range(201, 201 + CLIENTS))
REWARD = 100  # whole tokens per round


def _config(**sections: dict[str, Any]) -> RunConfig:
    raw: dict[str, dict[str, Any]] = {
        "federation": {"rounds": 2, "clients": CLIENTS, "seed": 5, "min-train-clients": 2},
        "train": {"local-epochs": 1},
        "attestation": {"enabled": True, "reward-per-round": REWARD, "flush-seconds": 5.0},
    }
    for name, values in sections.items():
        raw.setdefault(name, {}).update(values)
    return RunConfig.from_dict(raw)


def _client_app(run_dir: Path) -> Any:
    """fedlearn's ClientApp as the run's simulated holders run it."""
    return make_client_app(
        simulated=True,
        ledger_dir=run_dir / "holders",
        wallet=functools.partial(simulated_wallet, wallet_secret(run_dir)),
    )


def _run(
    run_dir: Path,
    cfg: RunConfig,
    *,
    handlers: dict[int, Handler] | None = None,
    drop: DropRule | None = None,
    resume: bool = False,
    on_round: Callable[[Any], None] | None = None,
) -> History:
    app = _client_app(run_dir)
    grid = LoopbackGrid({node: app for node in NODES} | (handlers or {}), drop=drop)
    with serverapp_identity():
        return run_federation(
            grid,
            cfg=cfg,
            run_dir=run_dir,
            test_set=server_test_set(cfg),
            resume=resume,
            on_round=on_round,
        )


def _wallet(run_dir: Path, partition: int) -> Any:
    return partition_wallet(wallet_secret(run_dir), partition=partition)


def _contracts(run_dir: Path) -> tuple[EmbeddedChain, Contracts]:
    chain = EmbeddedChain(state_dir=run_dir / "chain")
    return chain, Contracts.load(chain=chain, path=run_dir / "attestations" / "deployment.json")


def test_plaintext_run_attests_shapley_scores_and_pays_claims(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    history = _run(run_dir, _config())
    budget = REWARD * 10**TOKEN_DECIMALS
    for record in history.rounds:
        assert record.attestation["scoring"] == "gtg-shapley"
        assert record.attestation["confirmed"] and not record.attestation["error"]
        assert len(record.contributions) == CLIENTS
        assert sum(int(c["reward"]) for c in record.contributions.values()) <= budget
    chain, contracts = _contracts(run_dir)
    try:
        for record in history.rounds:
            bundle = json.loads(
                (run_dir / "attestations" / f"round-{record.round:06d}.json").read_text()
            )
            on_chain = contracts.root_of(run_id=decode_hex(bundle["run_id"]), round=record.round)
            assert encode_hex(on_chain) == record.attestation["root"] == bundle["root"]
        earned: dict[str, int] = {}
        for record in history.rounds:
            for c in record.contributions.values():
                earned[c["address"]] = earned.get(c["address"], 0) + int(c["reward"])
        for partition in range(CLIENTS):
            account = _wallet(run_dir, partition)
            assert verify_client(run_dir=run_dir, address=account.address, contracts=contracts) == [
                1,
                2,
            ]
            paid = claim_rewards(run_dir=run_dir, account=account, contracts=contracts)
            assert paid.total == earned[account.address]
            assert contracts.token_balance(account.address) == earned[account.address]
            again = claim_rewards(run_dir=run_dir, account=account, contracts=contracts)
            assert again.total == 0  # nothing is paid twice
    finally:
        chain.close()


def test_secure_run_attests_example_scores_of_the_contributors(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    history = _run(run_dir, _config(secure={"mode": "secagg+"}))
    for record in history.rounds:
        assert record.attestation["scoring"] == "examples"
        assert record.attestation["confirmed"]
        assert len(record.contributions) == record.secure["contributors"] == CLIENTS
        for contribution in record.contributions.values():
            assert contribution["score"] == contribution["examples"] > 0


def test_crypten_run_attests_scores_computed_inside_mpc(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    history = _run(run_dir, _config(secure={"mode": "crypten"}))
    for record in history.rounds:
        assert record.attestation["scoring"] == "alignment (secure)"
        scores = [c["score"] for c in record.contributions.values()]
        assert len(scores) == CLIENTS
        assert sum(scores) == pytest.approx(1.0, abs=1e-6)  # <x_k, s> / <s, s> sums to 1
        assert sum(int(c["reward"]) for c in record.contributions.values()) > 0


def test_a_replayed_signature_from_an_earlier_round_is_rejected(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    app = _client_app(run_dir)
    first_reply: dict[str, Message] = {}

    def replaying(msg: Message, context: Context) -> Message:
        """Node 204 sends its round-1 update and signature again in round 2."""
        if msg.metadata.message_type != "train":
            return app(msg, context)
        if "reply" not in first_reply:
            first_reply["reply"] = app(msg, context)
            return first_reply["reply"]
        return Message(first_reply["reply"].content, reply_to=msg)

    history = _run(run_dir, _config(), handlers={204: replaying})
    first, second = history.rounds
    assert len(first.contributions) == CLIENTS
    assert "204" in second.rejected and "round" in second.rejected["204"]
    assert len(second.contributions) == CLIENTS - 1


def test_a_signature_for_one_chain_and_ledger_is_refused_in_a_run_on_another(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The operator replays holder 204's signed reply of run A (chain A, ledger X) into
    run B (chain B, the same ledger address X) and run C (chain A, ledger Y), both started
    under run A's own id: the same run id, round and bytes, only the domain differs."""
    from eth_account import Account

    from fedlearn.attestation.chain import Deployment

    monkeypatch.setenv("FEDLEARN_COORDINATOR_KEY", Account.create().key.hex())
    cfg = _config(federation={"rounds": 1})
    run_a = tmp_path / "a"
    app = _client_app(run_a)
    signed: dict[str, Message] = {}

    def recording(msg: Message, context: Context) -> Message:
        reply = app(msg, context)
        if msg.metadata.message_type == "train":
            signed["reply"] = reply
        return reply

    def replaying(msg: Message, context: Context) -> Message:
        if msg.metadata.message_type != "train":
            return app(msg, context)
        return Message(signed["reply"].content, reply_to=msg)

    honest = _run(run_a, cfg, handlers={204: recording})
    assert len(honest.rounds[0].contributions) == CLIENTS  # the honest run attests everyone
    a = Deployment.load(run_a / "attestations" / "deployment.json")
    run_id = (run_a / "attestations" / "run-id").read_text()

    def replay_into(run_dir: Path, cfg: RunConfig) -> tuple[Deployment, History]:
        (run_dir / "attestations").mkdir(parents=True)
        (run_dir / "attestations" / "run-id").write_text(run_id)  # the operator reuses A's id
        history = _run(run_dir, cfg, handlers={204: replaying}, resume=True)
        return Deployment.load(run_dir / "attestations" / "deployment.json"), history

    node = Anvil(tmp_path, state=tmp_path / "anvil-state.json")
    node.start()
    try:
        b, on_chain_b = replay_into(
            tmp_path / "b",
            _config(
                federation={"rounds": 1},
                attestation={"chain": node.url, "chain-dev-faucet": True},
            ),
        )
    finally:
        node.stop()
    assert b.chain_id != a.chain_id and b.ledger == a.ledger  # same coordinator, same nonce
    monkeypatch.setenv("FEDLEARN_COORDINATOR_KEY", Account.create().key.hex())
    c, on_ledger_y = replay_into(tmp_path / "c", cfg)
    assert c.chain_id == a.chain_id and c.ledger != a.ledger
    for history, reason in ((on_chain_b, "signed for chain"), (on_ledger_y, "signed for ledger")):
        (record,) = history.rounds
        assert reason in record.rejected["204"], record.rejected
        assert len(record.contributions) == CLIENTS - 1
        assert all(
            c["address"] != signed["reply"].content["attestation"]["signer"]
            for c in record.contributions.values()
        )


def _assert_holds_no_secret(public: Path, secrets: Path) -> None:
    """No file under ``public`` contains any secret's bytes (raw or as hex text)."""
    needles = []
    for secret in secrets.rglob("*"):
        if secret.is_file():
            raw = secret.read_bytes()
            needles += [raw.strip(), raw.hex().encode()]
    assert len(needles) >= 4  # the coordinator key and the wallets' seed at least
    for path in public.rglob("*"):
        if path.is_file():
            data = path.read_bytes().lower()
            assert not any(n.lower() in data for n in needles), path


def test_secrets_live_apart_private_and_a_resumed_run_finds_them(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    cfg = _config()

    def crash_after_round_one(record: Any) -> None:
        raise RuntimeError("the server dies after round 1")

    with pytest.raises(RuntimeError, match="dies"):
        _run(run_dir, cfg, on_round=crash_after_round_one)
    secrets = run_dir / "secrets"
    assert sorted(p.name for p in secrets.iterdir()) == ["coordinator.key", "wallets.secret"]
    assert stat.S_IMODE(secrets.stat().st_mode) == 0o700
    for secret in secrets.iterdir():
        assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    assert not list((run_dir / "chain").glob("*.key"))
    assert not (run_dir / "holders" / "wallets.secret").exists()
    _assert_holds_no_secret(run_dir / "attestations", secrets)
    _assert_holds_no_secret(run_dir / "chain", secrets)

    # A run made before secrets/ existed kept them in the public folders; resuming
    # moves them out. The resumed run attests round 2 with the same coordinator (a
    # new key would not match the deployment) and its holders sign with the same wallets.
    key, seed = (secrets / "coordinator.key").read_bytes(), (secrets / "wallets.secret")
    addresses = {_wallet(run_dir, p).address for p in range(CLIENTS)}
    (secrets / "coordinator.key").rename(run_dir / "chain" / "coordinator.key")
    (run_dir / "holders").mkdir(exist_ok=True)
    seed.rename(run_dir / "holders" / "wallets.secret")
    resumed = _run(run_dir, cfg, resume=True)
    assert [r.round for r in resumed.rounds] == [1, 2]
    assert resumed.rounds[-1].attestation["confirmed"], resumed.rounds[-1].attestation
    assert {c["address"] for c in resumed.rounds[-1].contributions.values()} == addresses
    assert (secrets / "coordinator.key").read_bytes() == key
    assert not (run_dir / "chain" / "coordinator.key").exists()
    assert not (run_dir / "holders" / "wallets.secret").exists()
    chain, contracts = _contracts(run_dir)
    chain.close()
    coordinator = coordinator_account(cfg.attestation, run_dir)
    assert coordinator.address == contracts.deployment.coordinator


def test_chain_outage_delays_attestations_and_loses_none(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """anvil stops after round 1; rounds 2-3 wait in the outbox; back up, each is posted once."""
    from eth_account import Account

    from fedlearn.attestation.chain import RpcChain
    from fedlearn.attestation.outbox import Outbox

    node = Anvil(tmp_path, state=tmp_path / "anvil-state.json")
    node.start()
    coordinator = Account.create()
    monkeypatch.setenv("FEDLEARN_COORDINATOR_KEY", coordinator.key.hex())
    run_dir = tmp_path / "run"
    cfg = _config(
        federation={"rounds": 3},
        attestation={"chain": node.url, "chain-dev-faucet": True, "flush-seconds": 1.0},
    )
    trains = {"count": 0}

    def stop_the_chain_before_round_two(node_id: int, msg: Message) -> bool:
        if msg.metadata.message_type == "train" and node_id == NODES[0]:
            trains["count"] += 1
            if trains["count"] == 2:
                node.stop()  # orderly stop: anvil writes its state file, then is gone
        return False

    try:
        history = _run(run_dir, cfg, drop=stop_the_chain_before_round_two)
        assert [r.attestation["confirmed"] for r in history.rounds] == [True, False, False]
        assert all(r.applied for r in history.rounds)  # training never waited for the chain
        outbox = Outbox(path=run_dir / "attestations" / "outbox.sqlite")
        assert [e.round for e in outbox.pending()] == [2, 3]

        node.start()  # back, with its state
        chain = RpcChain(url=node.url, dev_faucet=True)
        contracts = Contracts.load(
            chain=chain, path=run_dir / "attestations" / "deployment.json", coordinator=coordinator
        )
        result = outbox.flush(contracts, deadline=30.0)
        assert result.complete, result.error
        assert outbox.flush(contracts, deadline=5.0).confirmed == []  # nothing sent twice
        events = contracts.round_posted_events()
        assert sorted(e.round for e in events) == [1, 2, 3]  # every round exactly once
        for record in history.rounds:
            run_id = decode_hex((run_dir / "attestations" / "run-id").read_text().strip())
            on_chain = contracts.root_of(run_id=run_id, round=record.round)
            assert encode_hex(on_chain) == record.attestation["root"]
        outbox.close()
        chain.close()
    finally:
        node.stop()


def test_verify_claim_and_attest_commands(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from fedlearn.cli import app

    run_dir = tmp_path / "run"
    history = _run(run_dir, _config(secure={"mode": "secagg+"}))
    account = _wallet(run_dir, 1)
    runner = CliRunner()

    verified = runner.invoke(app, ["verify", "--run", str(run_dir), "--client", account.address])
    assert verified.exit_code == 0, verified.output
    assert verified.output.count("verified on chain") == len(history.rounds)

    # What is published is enough: a copy of the public folders, without the run's
    # secrets, its config, its holders' files or anything else, verifies the same.
    published = tmp_path / "published"
    for name in PUBLIC_ARTIFACTS:
        shutil.copytree(run_dir / name, published / name)
    _assert_holds_no_secret(published, run_dir / "secrets")
    elsewhere = runner.invoke(app, ["verify", "--run", str(published), "--client", account.address])
    assert elsewhere.exit_code == 0, elsewhere.output
    assert elsewhere.output.count("verified on chain") == len(history.rounds)

    claimed = runner.invoke(
        app, ["claim", "--run", str(run_dir)], env={"FEDLEARN_WALLET_KEY": account.key.hex()}
    )
    assert claimed.exit_code == 0, claimed.output
    expected = sum(
        int(c["reward"])
        for r in history.rounds
        for c in r.contributions.values()
        if c["address"] == account.address
    )
    assert f"holds {expected / 10**TOKEN_DECIMALS:,.2f} FLR" in claimed.output
    again = runner.invoke(
        app, ["claim", "--run", str(run_dir)], env={"FEDLEARN_WALLET_KEY": account.key.hex()}
    )
    assert again.exit_code == 0 and "already claimed" in again.output

    # Nothing waits in the outbox; posting again sends nothing.
    posted = runner.invoke(app, ["attest", "--run", str(run_dir)])
    assert posted.exit_code == 0 and "0 pending" in posted.output

    # A tampered bundle (a higher score) no longer verifies, and the command says which round.
    bundle_file = run_dir / "attestations" / "round-000002.json"
    bundle = json.loads(bundle_file.read_text())
    for leaf in bundle["leaves"]:
        if leaf["client"] == account.address:
            leaf["score"] = str(int(leaf["score"]) * 10)
    bundle_file.write_text(json.dumps(bundle))
    tampered = runner.invoke(app, ["verify", "--run", str(run_dir), "--client", account.address])
    assert tampered.exit_code == 2  # what every refused command exits with
    assert "do not verify" in tampered.output
