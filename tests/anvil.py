"""A real anvil node (Foundry, from npm) on loopback, for chain tests."""

from __future__ import annotations

import os
from pathlib import Path

from fedlearn.processes import ProcessGroup, free_port, tcp_listening, wait_until

ANVIL = Path(__file__).resolve().parents[1] / "node_modules/@foundry-rs/anvil-linux-amd64/bin/anvil"


class Anvil:
    """A real anvil node on loopback, owned by PID (restartable on the same port and state)."""

    def __init__(self, tmp: Path, *, state: Path | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.state = state
        self.group = ProcessGroup(tmp / "logs")
        self.starts = 0

    def start(self) -> None:
        self.starts += 1
        name = f"anvil-{self.starts}"
        cmd = [str(ANVIL), "--host", "127.0.0.1", "--port", str(self.port)]
        cmd += ["--chain-id", "31337", "--silent"]
        if self.state is not None:
            cmd += ["--state", str(self.state)]
        self.group.start(name, cmd, env={"PATH": os.environ.get("PATH", "")})
        wait_until(
            lambda: tcp_listening("127.0.0.1", self.port),
            timeout=30,
            what=f"anvil on port {self.port}",
            check=lambda: self.group.check_alive(name),
            interval=0.05,
        )

    @property
    def proc(self) -> object:
        return self.group.procs[f"anvil-{self.starts}"]

    def stop(self) -> None:
        self.group.stop()
