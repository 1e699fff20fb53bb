"""End to end on Flower's Deployment Engine: real SuperLink, ServerApp and three
SuperNodes as separate processes on 127.0.0.1 with TLS, each data holder
reading its own CSV file; the federation aggregates under CKKS (the demo's
default mode), so the key ceremony and decryption stages cross real gRPC."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import tomli_w

from fedlearn.checkpoint import load_latest
from fedlearn.config import RunConfig
from fedlearn.data import iid_partition, load_bundled, split_train_test, write_csv
from fedlearn.deployment import FlowerCli, operator_home
from fedlearn.history import History
from fedlearn.processes import ProcessGroup, free_port, https_healthy, wait_until
from fedlearn.tls import make_certificates, make_node_keypair

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

CLIENTS = 3


def fedlearn_cmd(*args: str) -> list[str]:
    return [sys.executable, "-c", "from fedlearn.cli import main; main()", *args]


@pytest.fixture(scope="module")
def federation(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Three holders' CSV files, a server test file, and the run config."""
    root = tmp_path_factory.mktemp("deploy")
    data, classes = load_bundled("digits")
    train, test = split_train_test(data, test_fraction=0.2, seed=0)
    files = {}
    for i, part in enumerate(iid_partition(train.y, num_partitions=CLIENTS, seed=0)):
        files[f"holder{i}"] = write_csv(
            root / f"holder{i}" / "data.csv", train.subset(part), classes
        )
    files["test"] = write_csv(root / "server" / "test.csv", test, classes)
    cfg = RunConfig.from_dict(
        {
            "federation": {
                "rounds": 3,
                "clients": CLIENTS,
                "min-train-clients": 2,
                "timeout": 300.0,
            },
            "data": {"dataset": "files", "num-features": 64, "classes": list(classes)},
            "server": {"test-data": str(files["test"])},
        }
    )
    files["config"] = root / "run.toml"
    files["config"].write_text(tomli_w.dumps(cfg.to_dict()))
    files["root"] = root
    return files


def test_tls_ckks_federation_of_three_supernodes_reading_their_own_csv(
    federation: dict[str, Path],
) -> None:
    root = federation["root"]
    certs = make_certificates(root / "certs")
    port = free_port()
    run_dir = root / "run"
    with ProcessGroup(root / "logs") as group:
        server = _start_server(
            group, federation["config"], run_dir, root, port, certs.ca, "--secure", "ckks"
        )
        for i in range(CLIENTS):
            group.start(
                f"client{i}",
                fedlearn_cmd(
                    "client",
                    "--superlink",
                    f"127.0.0.1:{port}",
                    "--data",
                    str(federation[f"holder{i}"]),
                    "--root-certificates",
                    str(certs.ca),
                    "--partition-id",
                    str(i),
                    "--config",
                    str(federation["config"]),
                ),
                env=_env(root / f"home-client{i}"),
            )
        wait_until(
            lambda: server.poll() is not None,
            timeout=600,
            what="the federated run",
            interval=1.0,
            check=lambda: group.check_alive(*(f"client{i}" for i in range(CLIENTS))),
        )
        assert server.returncode == 0, group.log_tail("server")

    history = History.load(run_dir / "history.json")
    assert [r.round for r in history.rounds] == [1, 2, 3]
    assert all(r.accepted == CLIENTS and r.applied for r in history.rounds)
    assert all(r.secure["mode"] == "ckks" for r in history.rounds)
    assert all(r.secure["contributors"] == CLIENTS for r in history.rounds)
    assert history.rounds[-1].accuracy > 0.85, history.to_dict()
    assert history.rounds[-1].federated_accuracy > 0.8
    assert load_latest(run_dir / "checkpoints").round == 3
    # The raw data never left the holders: the server's run directory holds no CSV.
    assert not list(run_dir.rglob("*.csv"))


def test_supernode_authentication_refuses_an_unregistered_node(federation: dict[str, Path]) -> None:
    root = federation["root"] / "auth"
    certs = make_certificates(root / "certs")
    registered, registered_pub = make_node_keypair(root / "keys", "registered")
    stranger, _ = make_node_keypair(root / "keys", "stranger")
    port = free_port()
    with ProcessGroup(root / "logs") as group:
        _start_server(
            group,
            federation["config"],
            root / "run",
            root,
            port,
            certs.ca,
            "--supernode-auth",
            "--authorized-key",
            str(registered_pub),
        )
        wait_until(
            lambda: "submitted run" in group.log_tail("server", 100_000),
            timeout=120,
            what="run submission",
            check=lambda: group.check_alive("server"),
        )
        intruder = group.start(
            "stranger",
            fedlearn_cmd(
                "client",
                "--superlink",
                f"127.0.0.1:{port}",
                "--data",
                str(federation["holder0"]),
                "--root-certificates",
                str(certs.ca),
                "--auth-key",
                str(stranger),
            ),
            env=_env(root / "home-stranger"),
        )
        wait_until(lambda: intruder.poll() is not None, timeout=120, what="refusal of the stranger")
        assert intruder.returncode != 0
        assert "Failed to activate SuperNode" in group.log_tail("stranger")
        member = group.start(
            "member",
            fedlearn_cmd(
                "client",
                "--superlink",
                f"127.0.0.1:{port}",
                "--data",
                str(federation["holder1"]),
                "--root-certificates",
                str(certs.ca),
                "--auth-key",
                str(registered),
            ),
            env=_env(root / "home-member"),
        )
        # The registered node is accepted: the SuperLink lists it as online.
        # The Control API answers only the operator's credential (`fedlearn server` wrote it).
        cli = FlowerCli(address=f"127.0.0.1:{port}", ca=certs.ca, home=operator_home(root / "run"))

        def member_online() -> bool:
            nodes = cli.call("supernode", "list", "fedlearn")["nodes"]
            return any(n["status"] == "online" for n in nodes)

        wait_until(
            member_online,
            timeout=120,
            what="registered SuperNode",
            interval=2.0,
            check=lambda: group.check_alive("member"),
        )
        assert member.poll() is None


def _start_server(
    group: ProcessGroup, config: Path, run_dir: Path, root: Path, port: int, ca: Path, *extra: str
) -> subprocess.Popen[bytes]:
    """Start `fedlearn server` with the test's certificates and wait until its SuperLink is up."""
    server = group.start(
        "server",
        fedlearn_cmd(
            "server",
            "--config",
            str(config),
            "--run-dir",
            str(run_dir),
            "--certificates",
            str(root / "certs"),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            *extra,
        ),
        env=_env(root / "home-server"),
    )
    wait_until(
        lambda: https_healthy("127.0.0.1", port, ca),
        timeout=120,
        what="SuperLink",
        check=lambda: group.check_alive("server"),
    )
    return server


def _env(home: Path) -> dict[str, str]:
    from fedlearn.deployment import flower_process_env

    env = flower_process_env(home)
    env["PYTHONWARNINGS"] = "ignore::DeprecationWarning"
    return env
