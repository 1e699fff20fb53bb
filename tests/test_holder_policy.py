"""The holder's policy against an active server: every request below the floor is refused.

Each attack is a server message as the SuperLink would deliver it, answered by
fedlearn's real ClientApp (or its secure query handler); a refused request gets
an error reply naming the rule, and no update of any kind leaves the holder.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tomli_w
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.common.config import parse_config_args
from typer.testing import CliRunner

from fedlearn.cli import app as cli
from fedlearn.client_app import default_model, make_client_app
from fedlearn.config import RunConfig
from fedlearn.data import Dataset, write_csv
from fedlearn.privacy.policy import SECURE_MODES, HolderPolicy
from fedlearn.privacy.secure.base import request
from fedlearn.privacy.secure.client_mod import handle_secure_query
from fedlearn.privacy.secure.secaggplus.parameters import check_parameters
from fedlearn.wire import (
    CONFIG_KEY,
    SECURE_MODE_KEY,
    SECURE_QUERY_TYPE,
    CkksStage,
    CryptenStage,
    ErrorCode,
    SecAggStage,
)
from tests.flower_messages import instruction

NODE = 5


def run_config(mode: str = "none", *, min_train_clients: int = 2, **privacy: Any) -> RunConfig:
    return RunConfig.from_dict(
        {
            "federation": {"rounds": 3, "clients": 5, "min-train-clients": min_train_clients},
            "data": {"dataset": "files", "num-features": 4, "classes": ["no", "yes"]},
            "model": {"hidden": [8]},
            "secure": {"mode": mode},
            "privacy": privacy,
        }
    )


def train(
    cfg: RunConfig,
    *,
    mode: str | None = None,
    server_round: int = 1,
    secure: RecordDict | None = None,
) -> Message:
    """A train message; ``mode`` is what the server announces (default: the run config's)."""
    config = ConfigRecord({CONFIG_KEY: cfg.to_json(), "server-round": server_round})
    announced = cfg.secure.mode if mode is None else mode
    if announced != "none":
        config[SECURE_MODE_KEY] = announced
    content = RecordDict({"arrays": ArrayRecord(default_model(cfg).state_dict()), "config": config})
    for name, record in (secure or RecordDict()).items():
        content[name] = record
    return instruction(content, node_id=NODE)


def query(content: RecordDict) -> Message:
    return instruction(content, node_id=NODE, message_type=SECURE_QUERY_TYPE)


@pytest.fixture
def holder(tmp_path: Path) -> dict[str, Any]:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 4)).astype(np.float32)
    path = write_csv(
        tmp_path / "holder.csv", Dataset(x, (x[:, 0] > 0).astype(np.int64)), ("no", "yes")
    )
    return {"data-path": str(path), "ledger-dir": str(tmp_path / "ledgers")}


def context(node_config: dict[str, Any]) -> Context:
    return Context(
        run_id=1, node_id=NODE, node_config=node_config, state=RecordDict(), run_config={}
    )


def assert_refused(reply: Message, rule: str, code: ErrorCode = ErrorCode.POLICY) -> None:
    assert reply.has_error(), "the request was answered"
    assert reply.error.code == code, reply.error
    assert f"rule {rule!r}" in reply.error.reason, reply.error.reason
    assert not reply.has_content()  # no update, protected or not, is sent


# --- the policy itself ----------------------------------------------------------------------


def test_a_real_holders_default_policy_accepts_every_secure_mode_and_never_plaintext() -> None:
    policy = HolderPolicy.from_node_config({})
    assert policy.secure_modes == SECURE_MODES == {"ckks", "secagg+", "crypten"}
    assert not policy.allows("none")
    assert all(policy.allows(m) for m in SECURE_MODES)


def test_a_simulated_holders_default_policy_follows_the_run() -> None:
    assert HolderPolicy.from_node_config({}, simulated=True).allows("none")
    # ... unless its node config states a policy.
    stated = HolderPolicy.from_node_config({"allow-plaintext": False}, simulated=True)
    assert not stated.allows("none")


@pytest.mark.parametrize(
    "kwargs",
    [
        {"min_contributors": 1},
        {"min_contributors": True},
        {"secure_modes": frozenset({"rot13"})},
        {"secure_modes": frozenset(), "allow_plaintext": False},
        {"crypten_party_keys": (b"\x01" * 32,)},
        {"crypten_party_keys": (b"\x01" * 32, b"\x01" * 32)},
        {"crypten_party_keys": (b"\x01" * 31, b"\x02" * 32)},
    ],
)
def test_an_unsafe_or_malformed_policy_is_rejected_eagerly(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        HolderPolicy(**kwargs)


def test_the_policy_round_trips_through_the_node_config() -> None:
    policy = HolderPolicy(
        secure_modes=frozenset({"secagg+"}),
        min_contributors=4,
        crypten_party_keys=(b"\x01" * 32, b"\x02" * 32),
    )
    assert HolderPolicy.from_node_config(policy.node_config()) == policy


# --- the attacks ------------------------------------------------------------------------------


def test_a_plaintext_round_is_refused_by_a_holder_who_did_not_allow_it(
    holder: dict[str, Any],
) -> None:
    reply = make_client_app()(train(run_config("none")), context(holder))
    assert_refused(reply, "secure-mode")
    assert "plaintext" in reply.error.reason


def test_a_secure_run_config_announced_as_plaintext_is_refused(holder: dict[str, Any]) -> None:
    # The run says CKKS, the round's message asks for the update in the clear.
    node = {**holder, "allow-plaintext": True}
    reply = make_client_app()(train(run_config("ckks"), mode="none"), context(node))
    assert_refused(reply, "secure-mode")


def test_a_mode_the_holder_did_not_require_is_refused(holder: dict[str, Any]) -> None:
    node = {**holder, "require-secure": "secagg+"}
    reply = make_client_app()(train(run_config("crypten")), context(node))
    assert_refused(reply, "secure-mode")
    query_reply = handle_secure_query(query(request(CkksStage.REGISTER, round=1)), context(node))
    assert_refused(query_reply, "secure-mode")


@pytest.mark.parametrize("simulated", [False, True])
def test_a_server_that_lowers_the_secure_mode_mid_run_is_refused(
    holder: dict[str, Any], simulated: bool
) -> None:
    # Even a holder who accepts plaintext (a simulated one, or --allow-plaintext) keeps the
    # protection its run started with.
    node = context({**holder, "allow-plaintext": True})
    client_app = make_client_app(simulated=simulated)
    first = client_app(train(run_config("secagg+"), server_round=1), node)
    if first.has_error():  # no SecAgg+ session was set up: refused, but not by the policy
        assert first.error.code != ErrorCode.POLICY, first.error
    lowered = client_app(train(run_config("none"), server_round=2), node)
    assert_refused(lowered, "same-mode")
    switched = client_app(train(run_config("crypten"), server_round=2), node)
    assert_refused(switched, "same-mode")
    ceremony = handle_secure_query(query(request(CkksStage.REGISTER, round=2)), node)
    assert_refused(ceremony, "same-mode")


def test_a_run_config_that_lowers_min_train_clients_mid_run_is_refused(
    holder: dict[str, Any],
) -> None:
    node = context({**holder, "allow-plaintext": True})
    client_app = make_client_app()
    assert not client_app(train(run_config(min_train_clients=4), server_round=1), node).has_error()
    lowered = client_app(train(run_config(min_train_clients=2), server_round=2), node)
    assert_refused(lowered, "min-contributors")


def test_the_honest_path_still_trains(holder: dict[str, Any]) -> None:
    node = context({**holder, "allow-plaintext": True})
    client_app = make_client_app()
    for server_round in (1, 2):
        reply = client_app(train(run_config(), server_round=server_round), node)
        assert not reply.has_error(), reply.error
        assert "arrays" in reply.content.array_records


def test_a_budget_holder_asked_for_a_non_dp_round_is_refused(holder: dict[str, Any]) -> None:
    node = {**holder, "allow-plaintext": True, "epsilon-budget": 5.0}
    reply = make_client_app()(train(run_config()), context(node))
    assert_refused(reply, "dp-with-budget", code=ErrorCode.BUDGET)
    assert "5.0" not in reply.error.reason  # the holder's budget stays private


def test_a_ckks_decryption_of_fewer_contributors_than_the_floor_is_refused() -> None:
    # The holder raised its floor to 3; the server asks it to decrypt a sum of two.
    node = context({"min-contributors": 3})
    ask = request(CkksStage.DECRYPT, round=1, contributors=[1, 2], length=10)
    assert_refused(handle_secure_query(query(ask), node), "min-contributors")


def test_the_floor_defaults_to_the_runs_min_train_clients(holder: dict[str, Any]) -> None:
    node = context(holder)
    # Round 1 pins the run's min-train-clients (4) as the floor of every later sum (the
    # round itself fails later: this node holds no CKKS key, which the test does not need).
    first = make_client_app()(train(run_config("ckks", min_train_clients=4)), node)
    assert first.has_error() and first.error.code == ErrorCode.SECURE, first.error
    ask = request(CkksStage.DECRYPT, round=1, contributors=[1, 2, 3], length=10)
    assert_refused(handle_secure_query(query(ask), node), "min-contributors")


def _secagg_setup(node: Context, num_shares: int = 3) -> None:
    params = check_parameters(
        num_shares=num_shares,
        threshold=2,
        clipping_range=8.0,
        quantization_range=2**16,
        modulus_bits=32,
        stochastic_rounding=True,
    )
    reply = handle_secure_query(query(request(SecAggStage.SETUP, round=1, **params.fields())), node)
    assert not reply.has_error(), reply.error


def test_a_secagg_key_sharing_for_fewer_nodes_than_the_floor_is_refused() -> None:
    node = context({"min-contributors": 3})
    _secagg_setup(node)
    ask = request(SecAggStage.SHARE_KEYS, round=1, keyed=[NODE, 6])
    assert_refused(handle_secure_query(query(ask), node), "min-contributors")


def test_a_secagg_unmasking_of_fewer_survivors_than_the_floor_is_refused() -> None:
    # This node (5) neighbours every keyed node (5, 6, 7) and masked its vector; the
    # server claims node 7 dropped, so the sum would hold two updates: below the floor 3.
    node = context({"min-contributors": 3})
    _secagg_setup(node)
    state = node.state.config_records["secaggplus"]
    state.update(
        {
            "stage": SecAggStage.TRAIN,
            "last-masked-round": 1,
            "keyed": [NODE, 6, 7],
            "held-ids": [6, 7],
            "held-b": [b"b6", b"b7"],
            "held-sk": [b"sk6", b"sk7"],
            "own-b-share": b"b5",
            "own-sk-share": b"sk5",
        }
    )
    ask = request(SecAggStage.UNMASK, round=1, active=[NODE, 6], dead=[7])
    assert_refused(handle_secure_query(query(ask), node), "min-contributors")
    # Nothing was revealed: the honest request (every node survived) is still answered.
    honest = request(SecAggStage.UNMASK, round=1, active=[NODE, 6, 7], dead=[])
    reply = handle_secure_query(query(honest), node)
    assert not reply.has_error(), reply.error


def test_a_secagg_round_summing_fewer_nodes_than_the_floor_is_refused(
    holder: dict[str, Any],
) -> None:
    node = context({**holder, "min-contributors": 3})
    secure = request(SecAggStage.TRAIN, round=1, shared=[NODE, 6], sources=[6])
    reply = make_client_app()(train(run_config("secagg+"), secure=secure), node)
    assert_refused(reply, "min-contributors")


def test_a_crypten_round_with_other_party_keys_than_the_pinned_ones_is_refused(
    holder: dict[str, Any],
) -> None:
    pinned = (os.urandom(32), os.urandom(32))
    node = {**holder, "crypten-party-keys": ",".join(k.hex() for k in pinned)}
    client_app = make_client_app()

    def crypten_round(keys: tuple[bytes, ...]) -> Message:
        blobs = {f"party-key-{i}": key for i, key in enumerate(keys)}
        secure = request(CryptenStage.TRAIN, run="r", round=1, parties=len(keys), **blobs)
        return client_app(train(run_config("crypten"), secure=secure), context(node))

    substituted = (pinned[0], os.urandom(32))  # the server's own key for party 1
    assert_refused(crypten_round(substituted), "crypten-party-keys")
    assert_refused(crypten_round(pinned[::-1]), "crypten-party-keys")  # order is the index
    assert_refused(crypten_round((*pinned, os.urandom(32))), "crypten-party-keys")
    honest = crypten_round(pinned)
    assert not (honest.has_error() and honest.error.code == ErrorCode.POLICY), honest.error


def test_a_holder_with_an_invalid_policy_answers_nothing(holder: dict[str, Any]) -> None:
    node = {**holder, "min-contributors": 1}
    assert_refused(make_client_app()(train(run_config("ckks")), context(node)), "policy")
    ask = query(request(CkksStage.REGISTER, round=1))
    assert_refused(handle_secure_query(ask, context(node)), "policy")


# --- the command line -------------------------------------------------------------------------


def _run_client(monkeypatch: pytest.MonkeyPatch, data: Path, *args: str) -> tuple[int, str, str]:
    started: dict[str, Any] = {}

    def fake_serve_tasks(*, supernode: list[str], **_: Any) -> int:
        started["cmd"] = supernode
        return 0

    monkeypatch.setattr("fedlearn.app_trust.serve_tasks", fake_serve_tasks)
    base = ["client", "--superlink", "127.0.0.1:1", "--insecure", "--data", str(data)]
    result = CliRunner().invoke(cli, [*base, *args])
    cmd = started.get("cmd", [])
    node_config = cmd[cmd.index("--node-config") + 1] if "--node-config" in cmd else ""
    return result.exit_code, result.output, node_config


def test_the_client_prints_its_default_policy_and_passes_it_to_its_node(
    holder: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    code, output, node_config = _run_client(monkeypatch, Path(holder["data-path"]))
    assert code == 0, output
    assert "your policy" in output and "plaintext rounds: refused" in output
    assert "allow-plaintext=false" in node_config
    assert "require-secure='ckks,crypten,secagg+'" in node_config


def test_the_client_passes_the_holders_floor_to_its_node(
    holder: dict[str, Any], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    keys = [os.urandom(32), os.urandom(32)]
    files = []
    for i, key in enumerate(keys):
        files += ["--crypten-party-key", str(tmp_path / f"party-{i}.pub")]
        (tmp_path / f"party-{i}.pub").write_text(key.hex() + "\n")
    code, output, node_config = _run_client(
        monkeypatch,
        Path(holder["data-path"]),
        "--require-secure",
        "secagg+",
        "--min-contributors",
        "4",
        *files,
    )
    assert code == 0, output
    assert "secure modes accepted: secagg+" in output and "at least 4" in output
    # What the SuperNode hands the ClientApp: Flower's own parse of --node-config.
    policy = HolderPolicy.from_node_config(parse_config_args([node_config]))
    assert policy.secure_modes == {"secagg+"}
    assert policy.min_contributors == 4 and not policy.allow_plaintext
    assert policy.crypten_party_keys == tuple(keys)


@pytest.mark.parametrize(
    "args",
    [["--min-contributors", "1"], ["--require-secure", "rot13"]],
)
def test_the_client_refuses_an_unsafe_policy_before_joining(
    holder: dict[str, Any], monkeypatch: pytest.MonkeyPatch, args: list[str]
) -> None:
    code, output, node_config = _run_client(monkeypatch, Path(holder["data-path"]), *args)
    assert code != 0 and "invalid policy" in output
    assert node_config == ""  # no SuperNode was started


def test_the_client_warns_when_the_runs_config_is_below_its_policy(
    holder: dict[str, Any], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # A warning, not a refusal to start: the operator may still pick the mode with
    # `fedlearn server --secure MODE`; the policy then checks every round.
    config = tmp_path / "run.toml"
    config.write_text(tomli_w.dumps(run_config("none").to_dict()))
    data = Path(holder["data-path"])
    code, output, node_config = _run_client(monkeypatch, data, "--config", str(config))
    assert code == 0 and "below your policy" in output and "--allow-plaintext" in output
    assert "allow-plaintext=false" in node_config
    args = ("--config", str(config), "--allow-plaintext")
    code, output, node_config = _run_client(monkeypatch, data, *args)
    assert code == 0 and "below your policy" not in output
    assert "allow-plaintext=true" in node_config
