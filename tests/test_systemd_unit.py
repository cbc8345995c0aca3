"""The agent's systemd unit: systemd itself accepts it, and it runs the agent as designed."""

from __future__ import annotations

import configparser
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

UNIT = Path(__file__).resolve().parent.parent / "systemd" / "blockvault-agent.service"


@pytest.mark.parametrize("name", ["blockvault-agent.service", "blockvault-server.service"])
def test_systemd_analyze_verify_accepts_the_unit(tmp_path, name):
    """``systemd-analyze verify`` finds nothing wrong (with ExecStart pointed at this venv)."""
    source = UNIT.parent / name
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.fail("systemd-analyze is missing: tests/run installs the systemd package")
    blockvault = Path(sys.executable).parent / "blockvault"
    text = source.read_text().replace("/usr/local/bin/blockvault", str(blockvault))
    unit = tmp_path / name
    unit.write_text(text)
    res = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True)
    ours = [line for line in (res.stdout + res.stderr).splitlines() if name in line]
    assert res.returncode == 0 and not ours, res.stdout + res.stderr


def test_the_unit_runs_the_agent_on_a_root_only_socket():
    """ExecStart runs ``blockvault agent``; /run/blockvault and the state are root's alone."""
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # systemd keys are case-sensitive
    parser.read(UNIT)
    service = parser["Service"]
    assert service["ExecStart"].split()[1] == "agent"
    assert "/run/blockvault/agent.sock" in service["ExecStart"]
    assert service["RuntimeDirectoryMode"] == "0700"
    assert service["StateDirectoryMode"] == "0700"
    assert service["KillSignal"] == "SIGTERM"
    assert service["NoNewPrivileges"] == "yes"
    assert parser["Install"]["WantedBy"] == "multi-user.target"


SERVER_UNIT = UNIT.parent / "blockvault-server.service"


def test_the_server_unit_serves_a_datastore_it_may_write_and_nothing_else():
    """ExecStart runs ``blockvault serve``; the datastore is the one writable path."""
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str
    parser.read(SERVER_UNIT)
    service = parser["Service"]
    argv = service["ExecStart"].split()
    assert argv[1] == "serve"
    store = argv[argv.index("--store") + 1]
    assert service["ProtectSystem"] == "strict" and service["ReadWritePaths"] == store
    assert argv[argv.index("--state") + 1] == "/var/lib/" + service["StateDirectory"]
