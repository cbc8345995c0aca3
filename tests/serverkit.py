"""A real ``blockvault serve`` on 127.0.0.1 with TLS, started and stopped by a test.

The server runs as a child process on a free port, over a datastore directory of
the test's own; :meth:`RepoServer.client_env` gives the environment a node's client
needs (repository URL, node, token file, pinned fingerprint).
"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
from cliutil import ROOT, Result, blockvault


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


STORES: dict[str, str] = {}
"""The datastore (a directory, or s3://BUCKET/PREFIX) behind each running test server's URL."""


def datastore_of(location: str) -> str:
    """Return where ``location``'s objects are: itself, or a test server's datastore."""
    return STORES.get(location, location)


class RepoServer:
    """One ``blockvault serve`` over ``root/store`` (or the bucket location ``bucket``), its
    state in ``root/state``."""

    def __init__(self, root: Path, bucket: str | None = None) -> None:
        self.root = root
        self.store = root / "store"
        self.location = bucket or str(self.store)
        """What ``--store`` names: the directory, or ``s3://BUCKET/PREFIX``."""
        self.state = root / "state"
        self.port = free_port()
        self.url = f"https://127.0.0.1:{self.port}"
        self.fingerprint = ""
        self.proc: subprocess.Popen[str] | None = None
        self.log = root / "server.log"

    def start(self) -> RepoServer:
        """Start the server and wait until it answers (its fingerprint read from stdout)."""
        self.root.mkdir(parents=True, exist_ok=True)
        log = open(self.log, "a")  # noqa: SIM115 - the child writes it while it runs
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tui.cli", "serve", "--store", self.location,
             "--listen", f"127.0.0.1:{self.port}", "--state", str(self.state)],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=log, text=True,
        )
        log.close()
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert line.startswith("fingerprint "), f"server said {line!r}: {self.log.read_text()}"
        self.fingerprint = line.split()[1]
        STORES[self.url] = self.location
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                httpx.get(f"{self.url}/v1/ping", verify=False, timeout=1.0)
                return self
            except httpx.TransportError:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"the server died: {self.log.read_text()}") from None
                time.sleep(0.05)
        raise RuntimeError("the server did not answer within 30 s")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """Stop the server (SIGKILL to simulate a crash); waits for it to end."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdout:
            self.proc.stdout.close()
        self.proc = None

    def node(self, name: str, *, admin: bool = False) -> Path:
        """Register node ``name``; return the file holding its token."""
        token = self.root / f"{name}.token"
        args = ["serve", "node", "add", name, "--store", self.location,
                "--token-file", str(token)]
        res = blockvault(*args, *(["--admin"] if admin else []))
        assert res.rc == 0, res.out + res.err
        return token

    def client_env(self, name: str) -> dict[str, str]:
        """Return the environment of node ``name``'s client (registering it on first use)."""
        token = self.root / f"{name}.token"
        if not token.exists():
            self.node(name)
        return {
            "BLOCKVAULT_REPO": self.url,
            "BLOCKVAULT_NODE": name,
            "BLOCKVAULT_TOKEN_FILE": str(token),
            "BLOCKVAULT_FINGERPRINT": self.fingerprint,
            "BLOCKVAULT_COMMRESTARTDURATION": "0.5",
            "BLOCKVAULT_COMMRESTARTINTERVAL": "1",
        }

    def bv(self, name: str, *args: str, timeout: float = 300) -> Result:
        """Run ``blockvault ARGS`` as node ``name``."""
        return blockvault(*args, env=self.client_env(name), timeout=timeout)

    def __enter__(self) -> RepoServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def refusals(server: RepoServer) -> list[str]:
    """Return the lines of the server's log that record a refused request."""
    return [line for line in server.log.read_text().splitlines() if " refused " in line]


__all__ = ["STORES", "RepoServer", "datastore_of", "free_port", "refusals"]
