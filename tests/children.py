"""Child processes that keep a volume busy, for the tests that need a real one."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def holder(script: str, cwd: Path | None = None) -> Iterator[subprocess.Popen[str]]:
    """Run a Python child that does ``script``, prints ready, then waits; kill it on exit."""
    p = subprocess.Popen(
        [
            sys.executable,
            "-c",
            script + "\nprint('ready', flush=True)\nimport sys; sys.stdin.read()",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=cwd,
    )
    try:
        assert p.stdout is not None and p.stdout.readline().strip() == "ready"
        yield p
    finally:
        p.kill()
        p.wait()
