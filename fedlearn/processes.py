"""Processes owned by PID: start, poll for readiness, stop everything we started.

Flower's SuperLink and SuperNodes spawn helpers (``flower-superexec``,
``flwr-serverapp``, ``flwr-clientapp``), some in sessions of their own, and a
helper whose parent dies is re-parented to init. So every descendant ever
seen is remembered with its start time (guarding against PID reuse), and
:meth:`ProcessGroup.stop` terminates all of them, escalating to SIGKILL only
for survivors.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import subprocess
import time
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType

import psutil

__all__ = ["ProcessGroup", "free_port", "https_healthy", "tcp_listening", "wait_until"]


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port on ``host`` that is free right now."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def tcp_listening(host: str, port: int) -> bool:
    """Whether something accepts TCP connections on ``host:port``."""
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def https_healthy(host: str, port: int, ca: Path | None) -> bool:
    """Whether ``GET /health`` answers 200 (TLS verified against ``ca`` if given)."""
    if not tcp_listening(host, port):
        return False
    scheme = "https" if ca is not None else "http"
    context = ssl.create_default_context(cafile=str(ca)) if ca is not None else None
    try:
        with urllib.request.urlopen(
            f"{scheme}://{host}:{port}/health", context=context, timeout=2
        ) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def wait_until(
    condition: Callable[[], bool],
    *,
    timeout: float,
    what: str,
    check: Callable[[], None] | None = None,
    interval: float = 0.2,
) -> None:
    """Poll ``condition`` until true; raise ``TimeoutError`` naming ``what`` otherwise.

    ``check`` runs before each poll and may raise (e.g. a process died).
    """
    deadline = time.monotonic() + timeout
    while True:
        if check is not None:
            check()
        if condition():
            return
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{what} not ready after {timeout:.0f} s")
        time.sleep(interval)


class ProcessGroup:
    """Processes started by this object, stopped together by PID."""

    def __init__(self, log_dir: str | Path) -> None:
        self.log_dir = Path(log_dir)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self._seen: dict[int, float] = {}

    def __enter__(self) -> ProcessGroup:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(
        self, name: str, cmd: Sequence[str], env: Mapping[str, str], *, log: bool = True
    ) -> subprocess.Popen[bytes]:
        """Start ``cmd`` in a new session, output to ``LOG_DIR/NAME.log``.

        With ``log=False`` the process writes to this process's stdout and stderr.
        """
        if name in self.procs:
            raise ValueError(f"a process named {name!r} was already started")
        with contextlib.ExitStack() as stack:
            output = stack.enter_context((self.log_dir / f"{name}.log").open("wb")) if log else None
            proc = subprocess.Popen(
                list(cmd),
                env=dict(env),
                stdout=output,
                stderr=subprocess.STDOUT if log else None,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        self.procs[name] = proc
        self._remember()
        return proc

    def reap(self) -> dict[str, int]:
        """Forget the processes that have exited (their descendants stay tracked).

        Returns
        -------
        dict of str to int
            Exit codes of the processes forgotten now, by name.
        """
        self._remember()
        done = {name: p.returncode for name, p in self.procs.items() if p.poll() is not None}
        for name in done:
            del self.procs[name]
        return done

    def log_tail(self, name: str, chars: int = 3000) -> str:
        """The end of a process's log."""
        path = self.log_dir / f"{name}.log"
        return path.read_text(errors="replace")[-chars:] if path.exists() else ""

    def _remember(self) -> None:
        for proc in self.procs.values():
            proc.poll()  # reap promptly: a zombie parent looks alive to its children
            try:
                for child in psutil.Process(proc.pid).children(recursive=True):
                    self._seen.setdefault(child.pid, child.create_time())
            except psutil.Error:
                continue

    def check_alive(self, *names: str) -> None:
        """Raise ``RuntimeError`` with the log tail if a named process has exited."""
        self._remember()
        for name in names or tuple(self.procs):
            proc = self.procs[name]
            if proc.poll() is not None:
                raise RuntimeError(
                    f"{name} exited with code {proc.returncode}:\n{self.log_tail(name)}"
                )

    def _targets(self) -> list[psutil.Process]:
        self._remember()
        targets = []
        pids = {p.pid for p in self.procs.values() if p.poll() is None} | set(self._seen)
        for pid in pids:
            try:
                process = psutil.Process(pid)
                if pid in self._seen and abs(process.create_time() - self._seen[pid]) > 0.01:
                    continue  # the PID was reused by someone else's process
                if process.status() != psutil.STATUS_ZOMBIE:
                    targets.append(process)
            except psutil.Error:
                continue
        return targets

    def stop(self, grace: float = 5.0) -> None:
        """Terminate everything started (and its descendants); SIGKILL survivors."""
        targets = self._targets()
        for process in targets:
            try:
                process.terminate()
            except psutil.Error:
                continue
        _, alive = psutil.wait_procs(targets, timeout=grace)
        for process in alive:
            try:
                process.kill()
            except psutil.Error:
                continue
        psutil.wait_procs(alive, timeout=grace)
        for proc in self.procs.values():
            try:
                proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                proc.kill()
