"""Run the ``blockvault`` command line the way a user does, in a child process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclass
class Result:
    """What a CLI run printed and returned."""

    rc: int
    out: str
    err: str

    def json(self) -> Any:
        """Parse stdout, which ``--json`` promises is one JSON document."""
        return json.loads(self.out)


def blockvault(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> Result:
    """Run ``blockvault ARGS`` with this checkout's code; return rc and output."""
    full_env = {**os.environ, "COLUMNS": "200", **(env or {})}
    p = subprocess.run(
        [sys.executable, "-m", "tui.cli", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=full_env,
        timeout=timeout,
        check=False,
    )
    return Result(p.returncode, p.stdout, p.stderr)


def blockvault_as_nobody(*args: str) -> Result:
    """Run the CLI's ``main`` in a forked child that dropped root (uid/gid 65534).

    Forked rather than exec'd: the interpreter may live where nobody cannot read it
    (``/root/.pyenv``), and the behaviour under test is blockvault's, not the exec's.
    """
    # Modules the CLI imports lazily are imported here, while root can still read the
    # interpreter's library (it may live under /root, which nobody cannot read).
    import rich.console
    import rich.markup
    import rich.table
    import rich.tree  # noqa: F401

    from tui.cli import main

    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        rc = 70
        try:
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            os.dup2(out_w, 1)
            os.dup2(err_w, 2)
            sys.stdout = open(1, "w", closefd=False)  # noqa: SIM115
            sys.stderr = open(2, "w", closefd=False)  # noqa: SIM115
            rc = main(list(args))
            sys.stdout.flush()
            sys.stderr.flush()
        except BaseException:
            import traceback

            traceback.print_exc()
            sys.stderr.flush()
        finally:
            os._exit(rc)
    os.close(out_w)
    os.close(err_w)
    with os.fdopen(out_r) as o, os.fdopen(err_r) as e:
        out, err = o.read(), e.read()
    _, status = os.waitpid(pid, 0)
    return Result(os.waitstatus_to_exitcode(status), out, err)
