"""End to end, real processes: the stranger on the control plane and the server
that sends a holder an app it did not choose.

One federation serves every test here (set-up shared, as in
``test_e2e_deployment``): `fedlearn server` with SuperNode authentication and
TLS, a CKKS run of one round over two holders. Then

- a stranger who holds only ``ca.crt`` runs Flower's own `flwr ls`, `flwr stop`,
  `flwr run`, `flwr supernode register|list` against the federation's port, and
  pokes the Runtime API and other paths directly: every call is refused and the
  run list is unchanged;
- the operator (with its credential, i.e. an active server) submits a second
  run, of an app whose ClientApp reads the holder's data file and sends its
  bytes back. Holder 0 trusts only fedlearn's app: it refuses the run before
  any of its code runs, says so on its console, and its file's marker appears
  nowhere on the server side. Holder 1 pinned that app's hash (the positive
  control: the attack works, and the test would see the leak);
- the operator's own fedlearn run completes its round all the same.
"""

from __future__ import annotations

import json
import ssl
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import tomli_w

from fedlearn.config import RunConfig
from fedlearn.data import iid_partition, load_bundled, split_train_test, write_csv
from fedlearn.deployment import FlowerCli, operator_home
from fedlearn.history import History
from fedlearn.processes import ProcessGroup, free_port, wait_until
from fedlearn.tls import make_certificates, make_node_keypair
from tests.test_e2e_deployment import _env, _start_server, fedlearn_cmd

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

HOLDERS = 2
# A value no model, log or metric would print by chance; one cell of each holder's CSV.
MARKERS = ("13.371337421", "24.682468246")

EVIL_PYPROJECT = """
[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "evilapp"
version = "1.0.0"
description = "Reads the holder's data file"
license = "Apache-2.0"
dependencies = []

[tool.flwr.app]
publisher = "mallory"

[tool.flwr.app.components]
serverapp = "evilapp.server:app"
clientapp = "evilapp.client:app"

[tool.flwr.app.config]
out = ""
nodes = 2
"""

EVIL_CLIENT = """
from pathlib import Path

from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp

app = ClientApp()


@app.query()
def steal(msg: Message, context: Context) -> Message:
    data = Path(str(context.node_config["data-path"])).read_bytes()
    return Message(RecordDict({"loot": ConfigRecord({"bytes": data})}), reply_to=msg)
"""

EVIL_SERVER = """
import json
import ssl
import time
from pathlib import Path

from flwr.app import Context, Message, RecordDict
from flwr.serverapp import Grid, ServerApp

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    want = int(context.run_config["nodes"])
    deadline = time.monotonic() + 300
    while len(nodes := list(grid.get_node_ids())) < want and time.monotonic() < deadline:
        time.sleep(1)
    queries = [Message(RecordDict(), dst_node_id=n, message_type="query") for n in nodes]
    got = {}
    for reply in grid.send_and_receive(queries, timeout=300):
        node = str(reply.metadata.src_node_id)
        if reply.has_error():
            got[node] = {"error": int(reply.error.code), "reason": reply.error.reason}
        else:
            got[node] = {"loot": reply.content["loot"]["bytes"].decode("latin-1")}
    Path(str(context.run_config["out"])).write_text(json.dumps(got))
"""


@dataclass
class Federation:
    root: Path
    port: int
    ca: Path
    group: ProcessGroup
    server: subprocess.Popen[bytes]
    run_dir: Path
    run_id: int
    evil_app: Path
    holder_files: list[Path]
    keys: list[Path]

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def operator(self) -> FlowerCli:
        return FlowerCli(address=self.address, ca=self.ca, home=operator_home(self.run_dir))


def _write_evil_app(directory: Path) -> Path:
    (directory / "evilapp").mkdir(parents=True)
    (directory / "pyproject.toml").write_text(textwrap.dedent(EVIL_PYPROJECT))
    (directory / "evilapp" / "__init__.py").write_text("")
    (directory / "evilapp" / "client.py").write_text(EVIL_CLIENT)
    (directory / "evilapp" / "server.py").write_text(EVIL_SERVER)
    return directory


def _with_marker(path: Path, marker: str) -> None:
    """Put ``marker`` in one feature cell of the CSV (still a valid data file)."""
    lines = path.read_text().splitlines()
    cells = lines[1].split(",")
    cells[0] = marker
    lines[1] = ",".join(cells)
    path.write_text("\n".join(lines) + "\n")


@pytest.fixture(scope="module")
def federation(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Federation]:
    """`fedlearn server` up and its run submitted; no holder connected yet."""
    root = tmp_path_factory.mktemp("trust")
    data, classes = load_bundled("digits")
    train, test = split_train_test(data, test_fraction=0.2, seed=0)
    files = []
    for i, part in enumerate(iid_partition(train.y, num_partitions=HOLDERS, seed=0)):
        path = write_csv(root / f"holder{i}" / "data.csv", train.subset(part), classes)
        _with_marker(path, MARKERS[i])
        files.append(path)
    cfg = RunConfig.from_dict(
        {
            "federation": {
                "rounds": 1,
                "clients": HOLDERS,
                "min-train-clients": HOLDERS,
                "timeout": 300.0,
            },
            "data": {"dataset": "files", "num-features": 64, "classes": list(classes)},
            "server": {"test-data": str(write_csv(root / "server" / "test.csv", test, classes))},
        }
    )
    config = root / "run.toml"
    config.write_text(tomli_w.dumps(cfg.to_dict()))
    certs = make_certificates(root / "certs")
    keys, publics = zip(
        *(make_node_keypair(root / "keys", f"holder{i}") for i in range(HOLDERS)), strict=True
    )
    port = free_port()
    run_dir = root / "run"
    authorized = [arg for pub in publics for arg in ("--authorized-key", str(pub))]
    with ProcessGroup(root / "logs") as group:
        server = _start_server(
            group,
            config,
            run_dir,
            root,
            port,
            certs.ca,
            "--secure",
            "ckks",
            "--supernode-auth",
            *authorized,
        )
        wait_until(
            lambda: "submitted run" in group.log_tail("server", 100_000),
            timeout=180,
            what="run submission",
            check=lambda: group.check_alive("server"),
        )
        fed = Federation(
            root=root,
            port=port,
            ca=certs.ca,
            group=group,
            server=server,
            run_dir=run_dir,
            run_id=0,
            evil_app=_write_evil_app(root / "evil"),
            holder_files=files,
            keys=list(keys),
        )
        runs = fed.operator().call("ls", "fedlearn")["runs"]
        assert len(runs) == 1, runs
        fed.run_id = int(runs[0]["run-id"])
        # A settled state (its ServerApp waits for nodes), so "unchanged" means something.
        wait_until(
            lambda: fed.operator().status(fed.run_id)[0] == "running",
            timeout=180,
            what="the run's ServerApp",
            interval=1.0,
            check=lambda: group.check_alive("server"),
        )
        yield fed


def _flwr(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Flower's own CLI, as a stranger would run it."""
    return subprocess.run(
        [str(Path(sys.executable).parent / "flwr"), *args],
        env=_env(home),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_a_stranger_with_the_ca_can_neither_list_stop_nor_submit_runs(
    federation: Federation,
) -> None:
    home = federation.root / "stranger"
    stranger = FlowerCli(address=federation.address, ca=federation.ca, home=home)
    _, stranger_pub = make_node_keypair(federation.root / "keys", "stranger")
    before = federation.operator().call("ls", "fedlearn")["runs"]

    attempts = {
        "ls": ("ls", "fedlearn"),
        "stop": ("stop", str(federation.run_id), "fedlearn"),
        "run": ("run", str(federation.evil_app), "fedlearn"),
        "register": ("supernode", "register", str(stranger_pub), "fedlearn"),
        "nodes": ("supernode", "list", "fedlearn"),
    }
    for name, args in attempts.items():
        done = _flwr(home, *args)
        said = done.stdout + done.stderr
        assert done.returncode != 0, (name, said)
        assert "Authentication failed" in said, (name, said)
        with pytest.raises(RuntimeError, match=r"failed"):
            stranger.call(*args)

    # Below Flower's CLI: the Runtime API (a ServerApp's view of every reply), the
    # docs, and paths that would reach the Control API after normalisation.
    import httpx

    tls = ssl.create_default_context(cafile=str(federation.ca))
    with httpx.Client(verify=tls, base_url=f"https://{federation.address}") as h:
        for path in (
            "/v1/runtime/acquire-task",
            "/v1/runtime/pull-messages",
            "/v1/fleet/../control/list-runs",
            "/v1/fleet/%2e%2e/control/list-runs",
            "/v1/control/list-runs?x=1",
        ):
            status = h.post(path, content=b"").status_code
            assert status in (401, 404), (path, status)
        assert h.get("/docs").status_code == 404
        assert h.get("/openapi.json").status_code == 404
        assert (
            h.post("/v1/control/list-runs", headers={"Authorization": "Bearer x"}).status_code
            == 401
        )
        assert h.get("/health").status_code == 200

    after = federation.operator().call("ls", "fedlearn")["runs"]
    assert [r["run-id"] for r in after] == [r["run-id"] for r in before]
    assert after[0]["status"] == before[0]["status"]
    assert not after[0]["status"].startswith("finished"), after
    refused = federation.group.log_tail("server", 200_000)
    assert federation.server.poll() is None, refused


@pytest.fixture(scope="module")
def attacked(federation: Federation) -> dict[str, object]:
    """The operator submits the file-reading app; both holders join; everything finishes."""
    from flwr.cli.build import build_fab_from_disk

    from fedlearn.app_trust import fab_sha256

    out = federation.root / "evil-received.json"
    evil_hash = fab_sha256(build_fab_from_disk(federation.evil_app))
    evil_run = federation.operator().submit(
        federation.evil_app, {"out": str(out), "nodes": HOLDERS}
    )
    group = federation.group
    for i in range(HOLDERS):
        pin = ("--trust-app-hash", evil_hash) if i == 1 else ()
        group.start(
            f"holder{i}",
            fedlearn_cmd(
                "client",
                "--superlink",
                federation.address,
                "--data",
                str(federation.holder_files[i]),
                "--root-certificates",
                str(federation.ca),
                "--auth-key",
                str(federation.keys[i]),
                "--partition-id",
                str(i),
                *pin,
            ),
            env=_env(federation.root / f"home-holder{i}"),
        )
    holders = [f"holder{i}" for i in range(HOLDERS)]
    wait_until(
        out.exists,
        timeout=600,
        what="the replies to the file-reading app",
        interval=1.0,
        check=lambda: group.check_alive("server", *holders),
    )
    wait_until(
        lambda: federation.server.poll() is not None,
        timeout=600,
        what="the operator's run",
        interval=1.0,
        check=lambda: group.check_alive(*holders),
    )
    return {"out": out, "evil_run": evil_run, "evil_hash": evil_hash}


def test_a_holder_refuses_an_app_it_does_not_trust_and_its_file_never_leaves(
    federation: Federation, attacked: dict[str, object]
) -> None:
    received = json.loads(Path(str(attacked["out"])).read_text())
    assert len(received) == HOLDERS, received
    errors = [r for r in received.values() if "error" in r]
    loot = [r["loot"] for r in received.values() if "loot" in r]
    # Holder 0 answered with an error naming an untrusted bundle, nothing else.
    assert len(errors) == 1, received
    assert errors[0]["error"] == 7  # flwr ErrorCode.INVALID_FAB
    assert "does not run this app bundle" in errors[0]["reason"]
    # Holder 1 pinned the app: the attack works there, so the test sees a leak.
    assert len(loot) == 1 and MARKERS[1] in loot[0]

    holder0 = federation.group.log_tail("holder0", 200_000)
    assert f"REFUSED run {attacked['evil_run']}" in holder0, holder0
    assert str(attacked["evil_hash"]) in holder0
    assert "evilapp" not in "".join(
        p.name for p in (federation.root / "home-holder0").rglob("*")
    )  # never installed
    # Holder 0's marker reached nothing the server side holds: the SuperLink's
    # database, its logs, the ServerApps' outputs, the run directory.
    server_side = [federation.run_dir, federation.root / "logs", Path(str(attacked["out"]))]
    for place in server_side:
        files = [place] if place.is_file() else [p for p in place.rglob("*") if p.is_file()]
        for path in files:
            if path.name.startswith("holder"):
                continue  # the holders' own consoles
            assert MARKERS[0].encode() not in path.read_bytes(), path


def test_the_operators_own_run_completes_its_round(
    federation: Federation, attacked: dict[str, object]
) -> None:
    assert federation.server.returncode == 0, federation.group.log_tail("server")
    history = History.load(federation.run_dir / "history.json")
    assert [r.round for r in history.rounds] == [1]
    assert history.rounds[0].accepted == HOLDERS and history.rounds[0].applied
    assert history.rounds[0].secure["mode"] == "ckks"
