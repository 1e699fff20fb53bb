"""Flower's Deployment Engine: SuperLink, SuperNodes and run submission.

``fedlearn server`` starts a SuperLink (TLS unless insecure, optional
SuperNode authentication) on loopback behind a Fleet-only front on the
federation's port (:mod:`fedlearn.control_plane` says why), and submits the
run as a Flower App whose components are fedlearn's installed
``ServerApp``/``ClientApp``, with the operator's credential. Data holders join
with ``fedlearn client``, which starts a SuperNode pointed at their file that
runs only the apps the holder trusts (:mod:`fedlearn.app_trust`). We write no
transport or scheduler of our own: Flower is the engine.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tomli_w

from fedlearn import __version__
from fedlearn.control_plane import (
    Loopback,
    front_command,
    loopback_superlink,
    store_operator_credential,
    token_digest,
)
from fedlearn.files import private_directory, run_secrets
from fedlearn.history import History
from fedlearn.processes import ProcessGroup, free_port, https_healthy, wait_until
from fedlearn.simulation import flower_environment
from fedlearn.tls import Certificates

__all__ = [
    "FlowerCli",
    "SuperLinkSettings",
    "app_pyproject",
    "flower_process_env",
    "operator_home",
    "serve",
    "superlink_command",
    "supernode_command",
    "write_app",
]

log = logging.getLogger(__name__)

_BIN = Path(sys.executable).parent
_CONNECTION = "fedlearn"
_INSECURE_WARNING = (
    "INSECURE MODE: traffic between SuperLink and SuperNodes is NOT encrypted or "
    "authenticated; model updates can be read and altered on the network. Use only on a "
    "trusted loopback or test network."
)


def flower_process_env(flwr_home: str | Path) -> dict[str, str]:
    """Environment of a Flower process: ours, with this venv's ``bin`` first on PATH.

    SuperLink and SuperNode start ``flower-superexec`` by name, so it must be on PATH.
    """
    env = dict(os.environ)
    env.update(flower_environment(flwr_home))
    env["PATH"] = f"{_BIN}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONUNBUFFERED"] = "1"
    return env


@dataclass(frozen=True, kw_only=True)
class SuperLinkSettings:
    """How to start a SuperLink.

    ``host:port`` is the federation's address (the Fleet-only front listens
    there, with ``certificates``); the SuperLink itself listens on loopback.
    ``certificates=None`` means insecure (plain HTTP), which must be asked for.
    """

    host: str = "0.0.0.0"
    port: int = 9092
    certificates: Certificates | None
    supernode_auth: bool = False
    database: Path | None = None

    def __post_init__(self) -> None:
        if self.supernode_auth and self.certificates is None:
            raise ValueError("SuperNode authentication requires TLS; drop --insecure")


def superlink_command(settings: SuperLinkSettings, loopback: Loopback) -> list[str]:
    """The ``flower-superlink`` command line, bound to ``loopback`` only.

    Flower serves the Fleet, Control and Runtime APIs on this one port; only
    the front (:func:`fedlearn.control_plane.front_command`) is reachable from
    other hosts.
    """
    cmd = [
        str(_BIN / "flower-superlink"),
        "--host",
        "127.0.0.1",
        "--port",
        str(loopback.port),
        "--disable-runtime-dependency-installation",
    ]
    if settings.database is not None:
        cmd += ["--database", str(settings.database)]
    if loopback.certificates is None:
        cmd.append("--insecure")
    else:
        certs = loopback.certificates
        cmd += [
            "--ssl-ca-certfile",
            str(certs.ca),
            "--ssl-certfile",
            str(certs.cert),
            "--ssl-keyfile",
            str(certs.key),
        ]
    if settings.supernode_auth:
        cmd.append("--enable-supernode-auth")
    return cmd


def supernode_command(
    *,
    superlink: str,
    data_path: Path,
    root_certificates: Path | None,
    port: int,
    label_column: str | None = None,
    partition_id: int | None = None,
    auth_key: Path | None = None,
    epsilon_budget: float | None = None,
    delta: float | None = None,
    ledger_dir: Path | None = None,
    wallet_keystore: Path | None = None,
    superexec_secret: Path | None = None,
    policy: Mapping[str, bool | int | str] | None = None,
) -> list[str]:
    """The ``flower-supernode`` command line of one data holder.

    ``root_certificates=None`` means insecure. The SuperNode runs no app
    itself (``--isolation process``): :func:`fedlearn.app_trust.serve_tasks`
    acquires its tasks, signing with ``superexec_secret``, and runs only
    trusted app bundles.
    """
    data = str(data_path.resolve())
    if "'" in data or (label_column is not None and "'" in label_column):
        raise ValueError("data path and label column must not contain a single quote (')")
    node_config = f"data-path='{data}'"
    if label_column:
        node_config += f" label-column='{label_column}'"
    if partition_id is not None:
        node_config += f" partition-id={partition_id}"
    if epsilon_budget is not None:
        node_config += f" epsilon-budget={float(epsilon_budget)!r}"
    if delta is not None:
        node_config += f" delta={float(delta)!r}"
    if ledger_dir is not None:
        ledger = str(ledger_dir.resolve())
        if "'" in ledger:
            raise ValueError("the ledger directory must not contain a single quote (')")
        node_config += f" ledger-dir='{ledger}'"
    if wallet_keystore is not None:
        keystore = str(wallet_keystore.resolve())
        if "'" in keystore:
            raise ValueError("the wallet keystore path must not contain a single quote (')")
        node_config += f" wallet-keystore='{keystore}'"
    for key, value in (policy or {}).items():
        # The holder's policy (fedlearn.privacy.policy.HolderPolicy.node_config()).
        if isinstance(value, bool):
            node_config += f" {key}={'true' if value else 'false'}"
        elif isinstance(value, int):
            node_config += f" {key}={value}"
        elif "'" in value or " " in value:
            raise ValueError(f"policy entry {key!r} must not contain a quote or a space")
        else:
            node_config += f" {key}='{value}'"
    cmd = [
        str(_BIN / "flower-supernode"),
        "--superlink",
        superlink,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--node-config",
        node_config,
        "--isolation",
        "process",
    ]
    if superexec_secret is not None:
        cmd += ["--superexec-auth-secret-file", str(superexec_secret.resolve())]
    if root_certificates is None:
        cmd.append("--insecure")
    else:
        cmd += ["--root-certificates", str(root_certificates.resolve())]
    if auth_key is not None:
        cmd += ["--auth-supernode-private-key", str(auth_key.resolve())]
    return cmd


def app_pyproject() -> str:
    """The Flower App's ``pyproject.toml``: fedlearn's installed components, its version.

    The app bundle holds only this file, so its hash names "the app of
    fedlearn at this version" (what :mod:`fedlearn.app_trust` lets holders run).
    """
    project = {
        "build-system": {"requires": ["hatchling"], "build-backend": "hatchling.build"},
        "project": {
            "name": "fedlearn-run",
            "version": __version__,
            "description": "A fedlearn federation",
            "license": "Apache-2.0",
            "dependencies": [],
        },
        "tool": {
            "flwr": {
                "app": {
                    "publisher": "fedlearn",
                    "components": {
                        "serverapp": "fedlearn.server_app:app",
                        "clientapp": "fedlearn.client_app:app",
                    },
                    "config": {"config-path": "", "run-dir": "", "resume": False},
                }
            }
        },
    }
    return tomli_w.dumps(project)


def write_app(directory: Path) -> Path:
    """Write the Flower App (:func:`app_pyproject`, alone) into ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "pyproject.toml").write_text(app_pyproject(), encoding="utf-8")
    return directory


def _last_json(text: str) -> dict[str, Any]:
    start = text.find("{")
    if start < 0:
        raise RuntimeError(f"flwr printed no JSON: {text.strip()[-500:]}")
    parsed: dict[str, Any] = json.loads(text[start:])
    return parsed


def operator_home(run_dir: Path) -> Path:
    """The operator's ``FLWR_HOME``: the SuperLink connection and the operator's credential.

    ``RUN_DIR/secrets/operator`` (0700): whoever can read it controls the federation.
    """
    return run_secrets(run_dir.resolve()) / "operator"


class FlowerCli:
    """The ``flwr`` command line, pointed at one SuperLink through its own FLWR_HOME.

    The Control API answers only a ``FLWR_HOME`` holding the operator's
    credential (:func:`operator_home`); any other home is a stranger's.
    """

    def __init__(self, *, address: str, ca: Path | None, home: Path) -> None:
        self.home = home
        home.mkdir(parents=True, exist_ok=True)
        connection: dict[str, Any] = {"address": address}
        if ca is None:
            connection["insecure"] = True
        else:
            connection["root-certificates"] = str(ca.resolve())
        config = {"superlink": {"default": _CONNECTION, _CONNECTION: connection}}
        (home / "config.toml").write_text(tomli_w.dumps(config), encoding="utf-8")
        self.env = flower_process_env(home)

    def call(self, *args: str, timeout: float = 120) -> dict[str, Any]:
        """Run ``flwr ARGS --format json`` and return its JSON (which must say success)."""
        proc = subprocess.run(
            [str(_BIN / "flwr"), *args, "--format", "json"],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        # `--format json` exits 0 even on failure: the JSON's "success" is the truth.
        result = _last_json(proc.stdout)
        if not result.get("success", False):
            raise RuntimeError(
                f"flwr {args[0]} failed: {result.get('error-message', proc.stderr[-500:])}"
            )
        return result

    def register_node(self, public_key: Path) -> int:
        """Register a SuperNode's public key (SuperNode authentication)."""
        result = self.call("supernode", "register", str(public_key.resolve()), _CONNECTION)
        return int(result["node-id"])

    def submit(self, app_dir: Path, run_config: dict[str, Any]) -> int:
        """Submit a run of the app; return its run ID."""
        overrides = " ".join(
            f"{k}={json.dumps(v) if not isinstance(v, bool) else str(v).lower()}"
            for k, v in run_config.items()
        )
        result = self.call("run", str(app_dir), _CONNECTION, "--run-config", overrides)
        return int(result["run-id"])

    def status(self, run_id: int) -> tuple[str, str]:
        """``(status, details)`` of a run, e.g. ``("finished:completed", "")``."""
        result = self.call("ls", _CONNECTION, "--run-id", str(run_id))
        runs = result.get("runs", [])
        if not runs:
            return "unknown", ""
        return str(runs[0].get("status", "unknown")), str(runs[0].get("status-details", ""))


def serve(
    *,
    config_path: Path,
    run_dir: Path,
    settings: SuperLinkSettings,
    authorized_keys: tuple[Path, ...] = (),
    resume: bool = False,
    timeout: float = 3600.0,
    on_progress: Callable[[History], None] | None = None,
) -> History:
    """Start a SuperLink, submit the run, follow it to the end and stop the SuperLink.

    Parameters
    ----------
    config_path : Path
        The run's TOML config (read by the ServerApp).
    run_dir : Path
        Run directory; history, checkpoints and logs land here.
    settings : SuperLinkSettings
        Address, TLS and authentication.
    authorized_keys : tuple of Path
        Public keys of SuperNodes allowed to join (with ``supernode_auth``).
    resume : bool
        Continue ``run_dir`` from its last checkpoint.
    timeout : float
        Seconds the whole run may take.
    on_progress : callable, optional
        Called with the history whenever a round finishes.
    """
    if settings.certificates is None:
        log.warning(_INSECURE_WARNING)
    run_dir = run_dir.resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    status_file = run_dir / "status.json"
    status_file.unlink(missing_ok=True)
    host = "127.0.0.1" if settings.host in ("0.0.0.0", "::") else settings.host
    address = f"{host}:{settings.port}"
    with ProcessGroup(run_dir / "logs") as group:
        env = flower_process_env(run_dir / ".flwr" / "superlink")
        loopback = loopback_superlink(
            private_directory(run_secrets(run_dir) / "loopback-tls"),
            port=free_port(),
            tls=settings.certificates is not None,
        )
        group.start("superlink", superlink_command(settings, loopback), env)
        wait_until(
            lambda: https_healthy(
                "127.0.0.1",
                loopback.port,
                loopback.certificates.ca if loopback.certificates else None,
            ),
            timeout=60,
            what="SuperLink",
            check=lambda: group.check_alive("superlink"),
        )
        home = private_directory(operator_home(run_dir))
        token = store_operator_credential(home, address)
        group.start(
            "front",
            front_command(
                host=settings.host,
                port=settings.port,
                certificates=settings.certificates,
                loopback=loopback,
                operator_digest=token_digest(token),
            ),
            env,
        )
        ca = settings.certificates.ca if settings.certificates else None
        wait_until(
            lambda: https_healthy(host, settings.port, ca),
            timeout=60,
            what="the federation's port",
            check=lambda: group.check_alive("superlink", "front"),
        )
        cli = FlowerCli(address=address, ca=ca, home=home)
        log.info(
            "Flower's CLI with the operator's credential: FLWR_HOME=%s flwr ls %s",
            home,
            _CONNECTION,
        )
        for key in authorized_keys:
            cli.register_node(key)
        app_dir = write_app(run_dir / "app")
        run_id = cli.submit(
            app_dir,
            {"config-path": str(config_path.resolve()), "run-dir": str(run_dir), "resume": resume},
        )
        log.info("submitted run %d; SuperNodes can join at %s:%d", run_id, host, settings.port)
        seen_rounds = -1
        last_status_check = time.monotonic()
        deadline = time.monotonic() + timeout
        while True:
            group.check_alive("superlink", "front")
            history_file = run_dir / "history.json"
            if history_file.exists() and on_progress is not None:
                history = History.load(history_file)
                if len(history.rounds) != seen_rounds:
                    seen_rounds = len(history.rounds)
                    on_progress(history)
            if status_file.exists():
                state = json.loads(status_file.read_text(encoding="utf-8"))
                if state["state"] == "completed":
                    break
                if state["state"] == "failed":
                    raise RuntimeError(f"the run failed: {state.get('detail', '')}")
            if time.monotonic() - last_status_check > 15:
                last_status_check = time.monotonic()
                status, details = cli.status(run_id)
                if status.startswith("finished:") and not status_file.exists():
                    raise RuntimeError(f"run {run_id} ended as {status}: {details}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"run {run_id} did not finish within {timeout:.0f} s")
            time.sleep(0.5)
    return History.load(run_dir / "history.json")
