"""The compute parties of the ``crypten`` mode: processes the server starts, talks to and stops.

:class:`PartyPool` launches ``M`` party processes
(:mod:`fedlearn.privacy.secure.crypten_party`), collects their X25519 public
keys, and exchanges length-prefixed frames with them over their stdin/stdout
(one reader thread per party, every wait bounded by a deadline). A party that
crashes, hangs or breaks the channel protocol marks the pool broken; a party
that refuses a request (all failing parties refusing) leaves it usable.
:meth:`PartyPool.close` stops the parties by PID (polite ``stop`` first, then
terminate and kill), never by name.
"""

from __future__ import annotations

import contextlib
import os
import queue
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

import psutil

from fedlearn.privacy.secure.crypten_party import FrameError, read_frame, write_frame
from fedlearn.privacy.secure.envelope import PUBLIC_KEY_BYTES
from fedlearn.processes import free_port

__all__ = ["PartyError", "PartyPool", "check_count", "check_seconds"]


def check_seconds(name: str, value: Any) -> float:
    """``value`` as a positive number of seconds; ``ValueError`` naming ``name`` if not."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise ValueError(f"{name} must be a positive number of seconds, got {value!r}")
    return float(value)


def check_count(name: str, value: Any, minimum: int) -> int:
    """``value`` as an int of at least ``minimum``; ``ValueError`` naming ``name`` if not."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return value


class PartyError(Exception):
    """A party crashed, stopped answering, broke the channel protocol, or refused.

    ``refused`` is true when every failing party answered with a refusal: the
    parties are then still in step and the pool stays usable.
    """

    def __init__(self, reason: str, *, refused: bool = False) -> None:
        super().__init__(reason)
        self.refused = refused


class _Channel:
    """The server's end of one party's channel, read by a thread into a queue.

    Either a party process this pool started (its stdin/stdout) or a party run by
    its own operator (a TCP connection to its ``fedlearn party`` address).
    """

    def __init__(
        self,
        index: int,
        proc: subprocess.Popen[bytes] | None,
        log: Path | None,
        *,
        connection: socket.socket | None = None,
        endpoint: str = "",
    ) -> None:
        self.index, self.proc, self.log = index, proc, log
        self.connection, self.endpoint = connection, endpoint
        if connection is not None:
            self.reader: IO[bytes] = connection.makefile("rb")
            self.writer: IO[bytes] | None = connection.makefile("wb")
        else:
            assert proc is not None and proc.stdout is not None
            self.reader, self.writer = proc.stdout, proc.stdin
        self.closed = False
        self._frames: queue.Queue[tuple[dict[str, Any], list[bytes]] | str] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True, name=f"party-{index}")
        self._reader.start()

    def _read(self) -> None:
        while True:
            try:
                self._frames.put(read_frame(self.reader))
            except EOFError:
                self.closed = True
                self._frames.put("closed its channel")
                return
            except (FrameError, OSError, ValueError) as exc:
                self.closed = True
                self._frames.put(f"sent a malformed frame ({exc})")
                return

    def alive(self) -> bool:
        """Whether the party's process runs (started parties) or its connection is open."""
        if self.proc is not None:
            return self.proc.poll() is None
        return not self.closed

    def describe(self, what: str) -> str:
        if self.proc is None:
            return f"CrypTen party {self.index} at {self.endpoint} {what}"
        code = self.proc.poll()
        state = f"exited with code {code}" if code is not None else f"pid {self.proc.pid}"
        try:
            tail = self.log.read_text(errors="replace")[-1500:].strip() if self.log else ""
        except OSError:
            tail = ""
        return f"CrypTen party {self.index} ({state}) {what}" + (
            f"; log tail:\n{tail}" if tail else ""
        )

    def receive(
        self, deadline: float, expect: Sequence[str], seq: int | None
    ) -> tuple[dict[str, Any], list[bytes]]:
        try:
            item = self._frames.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            raise PartyError(self.describe("did not answer in time")) from None
        if isinstance(item, str):
            self._frames.put(item)  # stays closed for later reads
            raise PartyError(self.describe(item))
        header, blobs = item
        if header.get("seq") != seq:
            raise PartyError(self.describe(f"answered request {header.get('seq')}, not {seq}"))
        if header["type"] == "error":
            raise PartyError(
                self.describe(f"refused the request: {header.get('reason')}"), refused=True
            )
        if header["type"] not in expect:
            raise PartyError(self.describe(f"sent {header['type']!r}, expected {list(expect)}"))
        return header, blobs


class PartyPool:
    """``M`` CrypTen compute-party processes started and owned by this object.

    Each party generates its own X25519 key pair and announces the public half;
    the parties form a gloo group over loopback. Pass a pool to several
    :class:`CryptenServer` objects in turn to reuse it, or let the server start
    its own.

    Parameters
    ----------
    parties : int, default 2
        Number of compute parties ``M >= 2``.
    start_timeout : float, default 120.0
        Seconds to wait for all parties to import CrypTen and join the group.
    log_dir : str or Path, optional
        Where each party's log ``party-I.log`` goes (default: a temporary
        directory removed by :meth:`close`; errors quote the log's tail).
    min_contributors : int, default 2
        The parties refuse to reveal a sum of fewer clients (1 lets the server
        ask for one client's update: opt in only for tests).
    endpoints : sequence of str, optional
        ``HOST:PORT`` of parties run by their own operators (``fedlearn party``)
        to attach to instead of starting any: party ``i`` must answer at
        ``endpoints[i]`` with ``public_keys[i]``, all of them for the same run.
        The run token and the floor then come from the parties.
    public_keys : sequence of bytes, optional
        The attached parties' X25519 public keys as configured (pinned).

    Raises
    ------
    RuntimeError
        A party exited or did not become ready in time (its log tail included).

    Examples
    --------
    >>> with PartyPool(parties=2) as pool:  # doctest: +SKIP
    ...     server = CryptenServer(parties=pool)
    """

    def __init__(
        self,
        *,
        parties: int = 2,
        start_timeout: float = 120.0,
        log_dir: str | Path | None = None,
        min_contributors: int = 2,
        endpoints: Sequence[str] = (),
        public_keys: Sequence[bytes] = (),
    ) -> None:
        self.endpoints = tuple(endpoints)
        if self.endpoints:
            parties = len(self.endpoints)
            if len(public_keys) != parties or not all(
                isinstance(k, bytes) and len(k) == PUBLIC_KEY_BYTES for k in public_keys
            ):
                raise ValueError(
                    "attaching to running parties needs one 32-byte X25519 public key per endpoint"
                )
            if len(set(public_keys)) != parties:
                raise ValueError("two CrypTen parties are listed with the same public key")
        elif public_keys:
            raise ValueError("public_keys are for attaching to running parties (endpoints)")
        self.parties = check_count("parties", parties, 2)
        self.min_contributors = check_count("min_contributors", min_contributors, 1)
        start_timeout = check_seconds("start_timeout", start_timeout)
        #: A temporary log directory of our own is removed by :meth:`close`.
        self._own_log_dir = log_dir is None
        self.log_dir = Path(log_dir or tempfile.mkdtemp(prefix="fedlearn-crypten-"))
        self.log_dir.mkdir(parents=True, exist_ok=True)
        #: Random per-pool token bound into every envelope label.
        self.run = secrets.token_hex(16)
        self._channels: list[_Channel] = []
        self._write_lock = threading.Lock()
        self._seq = 0
        #: Why the pool cannot be used any more (``None`` while it can).
        self.broken: str | None = None
        started = time.monotonic()
        try:
            if self.endpoints:
                self._attach(time.monotonic() + start_timeout, tuple(public_keys))
            else:
                self._start(time.monotonic() + start_timeout)
        except BaseException:
            self.close()
            raise
        #: Seconds from launch until every party was ready.
        self.startup_seconds = time.monotonic() - started

    def _start(self, deadline: float) -> None:
        port = free_port()
        env = {
            **os.environ,
            "WORLD_SIZE": str(self.parties),
            "RENDEZVOUS": f"tcp://127.0.0.1:{port}",
            "DISTRIBUTED_BACKEND": "gloo",
            "MASTER_ADDR": "127.0.0.1",
            "OMP_NUM_THREADS": "1",
        }
        if Path("/sys/class/net/lo").exists():
            env["GLOO_SOCKET_IFNAME"] = "lo"  # gloo binds to loopback only
        # fedlearn's package __init__ files import lazily, so a party loads only
        # crypten_party, crypten_compat and envelope (plus torch, CrypTen,
        # cryptography): a small trusted code base and a quick start.
        command = [sys.executable, "-m", "fedlearn.privacy.secure.crypten_party"]
        for index in range(self.parties):
            log = self.log_dir / f"party-{index}.log"
            with log.open("wb") as stderr:
                proc = subprocess.Popen(
                    [*command, "--run", self.run, "--min-contributors", str(self.min_contributors)],
                    env={**env, "RANK": str(index)},
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    stderr=stderr,
                    start_new_session=True,
                )
            self._channels.append(_Channel(index, proc, log))
        keys = []
        try:
            for channel in self._channels:
                header, blobs = channel.receive(deadline, ["hello"], None)
                if (
                    header.get("party") != channel.index
                    or len(blobs) != 1
                    or len(blobs[0]) != PUBLIC_KEY_BYTES
                ):
                    raise PartyError(channel.describe(f"sent a bad hello {header}"))
                keys.append(blobs[0])
            for channel in self._channels:
                channel.receive(deadline, ["ready"], None)
        except PartyError as exc:
            raise RuntimeError(f"CrypTen parties failed to start: {exc}") from None
        if len(set(keys)) != len(keys):
            raise RuntimeError("two CrypTen parties announced the same public key")
        #: The parties' X25519 public keys, by party index.
        self.public_keys: tuple[bytes, ...] = tuple(keys)

    def _attach(self, deadline: float, expected: tuple[bytes, ...]) -> None:
        """Connect to parties run by their own operators and check who answers."""
        for index, endpoint in enumerate(self.endpoints):
            host, _, port = endpoint.removeprefix("tcp://").rpartition(":")
            connection = None
            while connection is None:
                try:
                    connection = socket.create_connection(
                        (host.strip("[]"), int(port)),
                        timeout=max(0.1, deadline - time.monotonic()),
                    )
                except (OSError, ValueError) as exc:
                    if time.monotonic() >= deadline:
                        raise RuntimeError(
                            f"cannot reach CrypTen party {index} at {endpoint}: {exc}"
                        ) from None
                    time.sleep(0.2)
            connection.settimeout(None)
            connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._channels.append(
                _Channel(index, None, None, connection=connection, endpoint=endpoint)
            )
        runs, floors = set(), []
        try:
            for channel, key in zip(self._channels, expected, strict=True):
                header, blobs = channel.receive(deadline, ["hello"], None)
                if header.get("party") != channel.index or header.get("parties") != self.parties:
                    raise PartyError(
                        channel.describe(
                            f"is party {header.get('party')} of {header.get('parties')}, listed "
                            f"as party {channel.index} of {self.parties}"
                        )
                    )
                if len(blobs) != 1 or blobs[0] != key:
                    raise PartyError(
                        channel.describe("announced a public key other than the configured one")
                    )
                run, floor = header.get("run"), header.get("min_contributors")
                if not isinstance(run, str) or not run:
                    raise PartyError(channel.describe("announced no run"))
                if isinstance(floor, bool) or not isinstance(floor, int) or floor < 2:
                    raise PartyError(channel.describe(f"announced a bad floor {floor!r}"))
                runs.add(run)
                floors.append(floor)
            for channel in self._channels:
                channel.receive(deadline, ["ready"], None)
        except PartyError as exc:
            raise RuntimeError(f"CrypTen parties failed to attach: {exc}") from None
        if len(runs) != 1:
            raise RuntimeError(f"the CrypTen parties serve different runs: {sorted(runs)}")
        self.run = runs.pop()
        # The pool's floor is a pre-check; each party enforces its own.
        self.min_contributors = max(self.min_contributors, *floors)
        self.public_keys = expected

    @property
    def attached(self) -> bool:
        """Whether the parties run on their own (``endpoints``), not as this pool's children."""
        return bool(self.endpoints)

    def __enter__(self) -> PartyPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def pids(self) -> tuple[int, ...]:
        """Process ids of the parties (all of them, alive or not)."""
        return tuple(c.proc.pid for c in self._channels if c.proc is not None)

    def healthy(self) -> bool:
        """Whether every party runs and no exchange with them has failed."""
        return self.broken is None and all(c.alive() for c in self._channels)

    def exchange(
        self,
        requests: Sequence[tuple[dict[str, Any], Sequence[bytes]]],
        *,
        expect: Sequence[str],
        deadline: float,
    ) -> list[tuple[dict[str, Any], list[bytes]]]:
        """Send request ``i`` to party ``i`` (concurrently), return each party's answer.

        Raises ``PartyError`` if a party died, timed out or refused (after
        reading every party's answer, so none is left to be mistaken for the
        answer to a later request); anything but a refusal by all failing
        parties marks the pool broken.
        """
        if not self.healthy():
            raise PartyError(self.broken or self._dead_reason())
        self._seq += 1
        seq = self._seq
        requests = [({**header, "seq": seq}, blobs) for header, blobs in requests]
        errors: list[str] = []

        def send(channel: _Channel, header: dict[str, Any], blobs: Sequence[bytes]) -> None:
            try:
                assert channel.writer is not None
                write_frame(channel.writer, header, blobs)
            except (OSError, ValueError) as exc:
                errors.append(channel.describe(f"could not be written to ({exc})"))

        writers = [
            threading.Thread(target=send, args=(channel, *req), daemon=True)
            for channel, req in zip(self._channels, requests, strict=True)
        ]
        with self._write_lock:
            for writer in writers:
                writer.start()
            for writer, channel in zip(writers, self._channels, strict=True):
                writer.join(max(0.0, deadline - time.monotonic()))
                if writer.is_alive():
                    errors.append(channel.describe("did not read the request in time"))
        if errors:
            self.broken = "; ".join(errors)
            raise PartyError(self.broken)
        answers: list[tuple[dict[str, Any], list[bytes]]] = []
        failures: list[PartyError] = []
        for channel in self._channels:
            try:
                answers.append(channel.receive(deadline, expect, seq))
            except PartyError as exc:
                failures.append(exc)
        if failures:
            reason = "; ".join(str(f) for f in failures)
            refused = all(f.refused for f in failures)
            if not refused:
                self.broken = reason
            raise PartyError(reason, refused=refused)
        return answers

    @property
    def unusable_reason(self) -> str:
        """Why the pool cannot be used (a failed exchange, a dead party or ``close``)."""
        return self.broken or self._dead_reason()

    def _dead_reason(self) -> str:
        dead = [c for c in self._channels if not c.alive()]
        return "; ".join(c.describe("is not running") for c in dead) or "pool closed"

    def close(self, grace: float = 5.0) -> None:
        """Stop the parties this pool started (polite ``stop``, then terminate/kill by PID).

        Attached parties (run by their own operators) are only disconnected: they
        keep running, and keep their one-sum-per-round memory, for the next
        connection.
        """
        polite = self.broken is None  # parties in step can leave the group cleanly
        if self.broken is None:
            self.broken = "pool closed"
        for channel in self._channels:
            if channel.proc is None:
                with contextlib.suppress(OSError, ValueError):
                    assert channel.writer is not None
                    write_frame(channel.writer, {"type": "stop"})
                if channel.connection is not None:
                    with contextlib.suppress(OSError):
                        channel.connection.shutdown(socket.SHUT_RDWR)
                    channel.connection.close()
        procs = [c.proc for c in self._channels if c.proc is not None]
        for channel in self._channels:
            if channel.proc is None:
                continue
            if channel.proc.poll() is None and channel.proc.stdin is not None:
                stopper = threading.Thread(
                    target=_stop_party, args=(channel.proc.stdin,), daemon=True
                )
                stopper.start()
                stopper.join(0.5)
        if polite:
            deadline = time.monotonic() + grace
            for proc in procs:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        for signal_name in ("terminate", "kill"):
            alive = [p for p in procs if p.poll() is None]
            for proc in alive:
                with contextlib.suppress(psutil.Error):
                    process = psutil.Process(proc.pid)
                    getattr(process, signal_name)()
                    process.resume()  # a stopped process handles SIGTERM only once resumed
            for proc in alive:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=grace)
        for proc in procs:
            if proc.stdout is not None:
                proc.stdout.close()
        if self._own_log_dir:
            shutil.rmtree(self.log_dir, ignore_errors=True)


def _stop_party(stdin: IO[bytes]) -> None:
    """Send ``stop`` and close the party's stdin (either makes it leave)."""
    with contextlib.suppress(OSError, ValueError):
        write_frame(stdin, {"type": "stop"})
    with contextlib.suppress(OSError, ValueError):
        stdin.close()
