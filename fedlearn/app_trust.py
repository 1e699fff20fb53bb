"""The data holder runs only code it trusts.

What Flower 1.41 does. A SuperNode pulls the run's app bundle (FAB) from
the SuperLink with the run's first message; with the default ``--isolation
subprocess`` it starts ``flower-superexec``, which starts ``flwr-clientapp``
for every message, which installs the FAB and imports whatever ClientApp the
FAB's ``pyproject.toml`` names (``flwr.supernode.runtime.run_clientapp``). The
only check on offer, ``--trusted-entities``, verifies Ed25519 signatures that
Flower's app platform adds to a FAB, and refuses every FAB whose
``verifications`` lack a ``valid_license`` entry set by the SuperLink
(``flwr.supernode.start_client_internal``): an open-source SuperLink never
sets it, and a signature by the platform says nothing about which app the
holder chose. The content hash, on the other hand, is solid: the node stores
a FAB only if its SHA-256 equals the hash the run names
(``NodeState.store_fab``), and FABs are built deterministically (fixed zip
dates, ``flwr.cli.build``).

What fedlearn does. ``fedlearn client`` starts the SuperNode with
``--isolation process`` (the SuperNode then executes nothing itself) and a
private SuperExec secret, and runs :func:`serve_tasks` in its place: it
acquires each ClientApp task from the SuperNode's loopback Runtime API
(signed with the secret, so no other local process can take the tasks) and
runs it in a fresh process (:func:`run_task`), which pulls the message and
the FAB, hashes the FAB's bytes and

- if the hash is trusted, installs and runs it exactly as ``flwr-clientapp``
  would;
- otherwise installs and imports nothing: it answers the message with an
  ``INVALID_FAB`` error and prints, on the holder's console, which run was
  refused, its hash and what the holder trusts.

Trusted are: the app fedlearn itself submits, at the holder's installed
version (:func:`fedlearn_app_hash`: the bundle of
:func:`fedlearn.deployment.app_pyproject`, which holds only a
``pyproject.toml`` naming ``fedlearn.server_app:app`` and
``fedlearn.client_app:app`` and fedlearn's version, so the code that runs is
the holder's installed fedlearn), and any bundle the holder pinned with
``--trust-app-hash SHA256``.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import signal
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from types import FrameType
from typing import Any

from fedlearn.processes import ProcessGroup

__all__ = [
    "TOKEN_ENV",
    "AppTrust",
    "fab_sha256",
    "fedlearn_app_hash",
    "run_task",
    "serve_tasks",
    "task_command",
]

log = logging.getLogger("fedlearn.app_trust")  # also when run with -m

TOKEN_ENV = "FEDLEARN_TASK_TOKEN"
"""How a task process gets its Runtime API token (the command line shows in ``ps``)."""

_ACQUIRE_TASK = "/flwr.proto.Runtime/AcquireTask"
_SHA256 = re.compile(r"[0-9a-f]{64}")


def fab_sha256(content: bytes) -> str:
    """SHA-256 (hex) of an app bundle's bytes, the way Flower names a FAB."""
    return hashlib.sha256(content).hexdigest()


@cache
def fedlearn_app_hash() -> str:
    """Hash of the bundle ``fedlearn server`` submits, at this installed version."""
    from flwr.cli.build import build_fab_from_files

    from fedlearn.deployment import app_pyproject

    fab, _ = build_fab_from_files({"pyproject.toml": app_pyproject().encode("utf-8")})
    return fab_sha256(fab)


@dataclass(frozen=True)
class AppTrust:
    """Which app bundles this holder runs: fedlearn's own, and the ones it pinned."""

    fedlearn: str
    pinned: tuple[str, ...] = ()

    @classmethod
    def for_holder(cls, pinned: Sequence[str] = ()) -> AppTrust:
        """The holder's trust: fedlearn's installed app plus ``pinned`` SHA-256 hashes.

        Raises
        ------
        ValueError
            If a pinned hash is not 64 hex digits.
        """
        normalized = []
        for value in pinned:
            digest = value.strip().lower()
            if not _SHA256.fullmatch(digest):
                raise ValueError(f"--trust-app-hash takes a SHA-256 (64 hex digits), got {value!r}")
            normalized.append(digest)
        return cls(fedlearn=fedlearn_app_hash(), pinned=tuple(dict.fromkeys(normalized)))

    @property
    def hashes(self) -> frozenset[str]:
        """Every trusted bundle hash."""
        return frozenset((self.fedlearn, *self.pinned))

    def describe(self) -> str:
        """One line for the holder's console."""
        from fedlearn import __version__

        text = f"fedlearn {__version__}'s own ClientApp (app bundle sha256 {self.fedlearn})"
        if self.pinned:
            text += " and the app bundles you pinned: " + ", ".join(self.pinned)
        return text


def task_command(
    *,
    runtime_api_address: str,
    trusted: frozenset[str],
    parent_pid: int,
) -> list[str]:
    """Command line of one task process (its token goes in ``$FEDLEARN_TASK_TOKEN``)."""
    cmd = [
        sys.executable,
        "-m",
        "fedlearn.app_trust",
        "--runtime-api-address",
        runtime_api_address,
        "--parent-pid",
        str(parent_pid),
    ]
    for digest in sorted(trusted):
        cmd += ["--trusted", digest]
    return cmd


def _runtime_client(address: str, *interceptors: Any, retry: bool = False) -> Any:
    """A client of the SuperNode's Runtime API (plain HTTP: it listens on loopback only)."""
    from flwr.supercore.retry import make_simple_http_retry_invoker
    from flwr.supercore.runtime import RuntimeHttpClient

    return RuntimeHttpClient.from_server_address(
        server_address=address,
        insecure=True,
        root_certificates=None,
        interceptors=list(interceptors),
        retry_invoker=make_simple_http_retry_invoker() if retry else None,
    )


def serve_tasks(
    *,
    supernode: Sequence[str],
    env: Mapping[str, str],
    runtime_api_address: str,
    secret_file: Path,
    trust: AppTrust,
    log_dir: Path,
    poll_interval: float = 0.5,
) -> int:
    """Run the holder's SuperNode and execute its tasks; return the SuperNode's exit code.

    The SuperNode (``--isolation process``, the secret in ``secret_file``)
    prints to this process's console. Every ClientApp task it creates is
    acquired here and run by :func:`run_task` in a process of its own.
    """
    from flwr.proto.runtime_pb2 import AcquireTaskRequest
    from flwr.supercore.constant import TaskType
    from flwr.supercore.interceptors import (
        RuntimeVersionHttpInterceptor,
        SuperExecAuthHttpInterceptor,
    )

    secret = secret_file.read_bytes()

    def stop(signum: int, frame: FrameType | None) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, stop)
    with ProcessGroup(log_dir) as group:
        node = group.start("supernode", supernode, env, log=False)
        client = _runtime_client(
            runtime_api_address,
            RuntimeVersionHttpInterceptor(component_name="SuperExec"),
            SuperExecAuthHttpInterceptor(master_secret=secret, protected_methods={_ACQUIRE_TASK}),
        )
        task_env = dict(env)
        failures = 0
        try:
            while node.poll() is None:
                group.reap()
                try:
                    acquired = client.AcquireTask(
                        AcquireTaskRequest(supported_task_types=[TaskType.CLIENT_APP])
                    )
                    failures = 0
                except Exception as exc:  # the Runtime API is not up yet, or going down
                    failures += 1
                    if failures % 120 == 0:  # every minute or so, not at start-up
                        log.warning("cannot take tasks from the SuperNode: %s", exc)
                    time.sleep(poll_interval)
                    continue
                if acquired.HasField("task") and acquired.token:
                    task_env[TOKEN_ENV] = acquired.token
                    group.start(
                        f"task-{acquired.task.task_id}",
                        task_command(
                            runtime_api_address=runtime_api_address,
                            trusted=trust.hashes,
                            parent_pid=os.getpid(),
                        ),
                        task_env,
                        log=False,
                    )
                    continue
                time.sleep(poll_interval)
        finally:
            client.close()
        return int(node.returncode)


def _refusal_line(run: Any, digest: str, trusted: frozenset[str]) -> str:
    return (
        f"REFUSED run {run.run_id}: its app bundle ({run.fab_id or '?'} "
        f"{run.fab_version or '?'}, sha256 {digest}) is not an app you trust "
        f"(trusted: {', '.join(sorted(trusted))}); nothing of it was installed or run, "
        "and the server gets an error reply. Pin it with --trust-app-hash only if you "
        "have reviewed it."
    )


def run_task(
    *,
    runtime_api_address: str,
    token: str,
    trusted: frozenset[str],
    parent_pid: int | None = None,
) -> int:
    """Run one ClientApp task if its app bundle is trusted; refuse it otherwise.

    Mirrors ``flwr.supernode.runtime.run_clientapp`` (and reuses its
    ``pull_task_input``, ``push_message`` and ``push_task_output``), with the
    bundle's hash checked before anything of it is installed or imported.

    Returns
    -------
    int
        0 when the ClientApp ran, 1 when it raised, 2 when the bundle was refused.
    """
    from flwr.app import Context, Message
    from flwr.app.error import Error
    from flwr.cli.install import install_from_fab
    from flwr.clientapp.client_app import LoadClientAppError
    from flwr.clientapp.utils import get_load_client_app_fn
    from flwr.common.constant import ErrorCode, SubStatus
    from flwr.supercore.app_utils import start_parent_process_monitor
    from flwr.supercore.heartbeat import HeartbeatSender, make_task_heartbeat_fn_http
    from flwr.supercore.interceptors import (
        RuntimeTokenHttpInterceptor,
        RuntimeVersionHttpInterceptor,
    )
    from flwr.supernode.runtime.run_clientapp import (
        pull_task_input,
        push_message,
        push_task_output,
    )

    if parent_pid is not None:
        start_parent_process_monitor(parent_pid)
    client = _runtime_client(
        runtime_api_address,
        RuntimeVersionHttpInterceptor(component_name="flwr-clientapp"),
        RuntimeTokenHttpInterceptor(token),
        retry=True,
    )
    heartbeat = HeartbeatSender(make_task_heartbeat_fn_http(client))
    heartbeat.start()
    context: Context | None = None
    reply: Message | None = None
    sub_status, details, code = SubStatus.FAILED, "ClientApp task failed", 1
    try:
        message, context, run, fab = pull_task_input(client)
        digest = fab_sha256(fab.content)
        if digest not in trusted:
            print(f"fedlearn client: {_refusal_line(run, digest, trusted)}", file=sys.stderr)
            reply = Message(
                Error(
                    code=ErrorCode.INVALID_FAB,
                    reason="the data holder does not run this app bundle (not one it trusts)",
                ),
                reply_to=message,
            )
            details = f"app bundle sha256 {digest} not trusted by this data holder"
            code = 2
            return code
        try:
            app_dir = install_from_fab(fab.content, skip_prompt=True)
            load = get_load_client_app_fn(default_app_ref="", app_path=str(app_dir), multi_app=True)
            client_app = load(run.fab_id, run.fab_version, digest)
            reply = client_app(message=message, context=context)
            sub_status, details, code = SubStatus.COMPLETED, "", 0
        except Exception as exc:
            error_code = (
                ErrorCode.LOAD_CLIENT_APP_EXCEPTION
                if isinstance(exc, LoadClientAppError)
                else ErrorCode.CLIENT_APP_RAISED_EXCEPTION
            )
            log.exception("the ClientApp raised an exception")
            details = f"{type(exc).__name__}: {exc}"
            reply = Message(Error(code=error_code, reason=details), reply_to=message)
        return code
    finally:
        try:
            if reply is not None and context is not None:
                push_message(client, reply, context)
        finally:
            push_task_output(client=client, context=context, sub_status=sub_status, details=details)
            if heartbeat.is_running:
                heartbeat.stop()
            client.close()


def main(argv: list[str] | None = None) -> None:
    """Entry point of a task process (``python -m fedlearn.app_trust``)."""
    import argparse

    parser = argparse.ArgumentParser(description="Run one ClientApp task if its app is trusted")
    parser.add_argument("--runtime-api-address", required=True)
    parser.add_argument("--trusted", action="append", default=[])
    parser.add_argument("--parent-pid", type=int)
    args = parser.parse_args(argv)
    token = os.environ.pop(TOKEN_ENV, "")
    if not token:
        parser.error(f"${TOKEN_ENV} is not set")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    sys.exit(
        run_task(
            runtime_api_address=args.runtime_api_address,
            token=token,
            trusted=frozenset(args.trusted),
            parent_pid=args.parent_pid,
        )
    )


if __name__ == "__main__":
    main()
