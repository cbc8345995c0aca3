"""Shared fixtures: the loop-device kit, and the guard against leaked devices and mounts."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cliutil import blockvault
from loopkit import REQUIRE_ENV, LoopKit, kit_leftovers, loop_unavailable_reason
from s3kit import Gateway, gateway_or_skip, new_bucket_location
from serverkit import RepoServer

KIT_ROOT = Path("/tmp/blockvault-tests") / f"run-{os.getpid()}"

# No test talks to an agent it did not start: a console opened on this machine may
# have started one on the default socket. Agent tests pass their own socket.
os.environ["BLOCKVAULT_AGENT_SOCKET"] = str(KIT_ROOT / "no-agent-here.sock")
# Undo records of killed test backups stay with this run, not with the machine's.
os.environ["BLOCKVAULT_UNDO_DIR"] = str(KIT_ROOT / "undo")
# So do the marks of restores that did not finish (core.unfinished).
os.environ["BLOCKVAULT_STATE_DIR"] = str(KIT_ROOT / "state")
"""Every kit's files of this run live here, so a leak check can tell our devices from
anyone else's — including another test run on the same machine."""


def pytest_runtest_setup(item: pytest.Item) -> None:
    """Skip ``loop`` tests where they cannot run — or fail them when CI demands they run."""
    if item.get_closest_marker("loop") is None:
        return
    reason = loop_unavailable_reason()
    if reason is None:
        return
    if os.environ.get(REQUIRE_ENV) == "1":
        pytest.fail(f"{REQUIRE_ENV}=1 but this loop-device test cannot run: {reason}")
    pytest.skip(f"loop-device test: {reason}")


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Fail the run if any loop device or mount of the kit outlived its test."""
    if not KIT_ROOT.exists() or loop_unavailable_reason() is not None:
        return
    loops, mounts = kit_leftovers(KIT_ROOT)
    if loops or mounts:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
        sys.stderr.write(f"\nLEAKED by the test run: loop devices {loops}, mounts {mounts}\n")
    else:
        shutil.rmtree(KIT_ROOT, ignore_errors=True)


@pytest.fixture
def loopkit(request: pytest.FixtureRequest) -> Iterator[LoopKit]:
    """A :class:`LoopKit`; everything it made is undone after the test, and leaks fail it."""
    if request.node.get_closest_marker("loop") is None:
        raise RuntimeError("tests that use loopkit must be marked @pytest.mark.loop")
    KIT_ROOT.mkdir(parents=True, exist_ok=True)
    kit = LoopKit(KIT_ROOT)
    try:
        yield kit
    finally:
        failures = kit.close()
        # A detach while another process (a concurrent device scan) has the device open
        # completes when that process closes it: give it a moment before calling it a leak.
        deadline = time.monotonic() + 3
        while (leftovers := kit_leftovers(kit.workdir)) != ([], []) and time.monotonic() < deadline:
            time.sleep(0.05)
        loops, mounts = leftovers
        for mp in sorted(mounts, reverse=True):
            subprocess.run(["umount", "-l", mp], check=False)
        for dev in loops:
            subprocess.run(["losetup", "--detach", dev], check=False)
        if failures or loops or mounts:
            pytest.fail(f"test leaked: undo failures {failures}, loops {loops}, mounts {mounts}")


@pytest.fixture
def blockvault_cli() -> list[str]:
    """The command that runs the CLI of this checkout."""
    return [sys.executable, "-m", "tui.cli"]


@pytest.fixture
def repo_server(tmp_path: Path) -> Iterator[RepoServer]:
    """A real ``blockvault serve`` (TLS, 127.0.0.1) over a datastore of this test; stopped after."""
    server = RepoServer(tmp_path / "server")
    try:
        yield server.start()
    finally:
        server.stop()


def server_repository(server: RepoServer, monkeypatch: pytest.MonkeyPatch, node: str = "node1",
                      encryption: str = "none") -> str:
    """Make the server's repository as ``node`` and point this process's clients at it."""
    for name, value in server.client_env(node).items():
        monkeypatch.setenv(name, value)
    res = server.bv(node, "repo", "init", "--encryption", encryption)
    assert res.rc == 0, res.out + res.err
    return server.url


@pytest.fixture(scope="session")
def rgw() -> Iterator[Gateway]:
    """The real S3 server of this run: the one tests/run started, or a private one."""
    gateway = gateway_or_skip()
    try:
        yield gateway
    finally:
        gateway.stop()  # only one this session started


@pytest.fixture
def s3_location(rgw: Gateway, monkeypatch: pytest.MonkeyPatch) -> str:
    """``s3://BUCKET/repo`` in a bucket of this test's own; the AWS variables set for clients."""
    for name, value in rgw.env.items():
        monkeypatch.setenv(name, value)
    return new_bucket_location(rgw)


def bucket_repository(location: str, encryption: str = "none") -> str:
    """Make the repository at the bucket location ``location``."""
    res = blockvault("repo", "init", "--repo", location, "--encryption", encryption)
    assert res.rc == 0, res.out + res.err
    return location


SERVER_S3_TESTS = (
    "test_image_roundtrip.py::",
    "test_guide_week.py::test_incremental_deletefiles_restores_thursday_exactly",
    "test_guide_week.py::test_prune_keeps_what_increments_need_and_check_verifies_them",
)
"""Where ``repo_location`` also runs as a server over a bucket: the round trips, and of the
guide's week the replay and the prune and check (each test of the week builds its week
again, 12 s through such a server). The rest of the repository suite passes so too
(``BLOCKVAULT_TEST_ALL_BACKENDS=1`` runs it all that way); all of it in CI would cost
three minutes more."""


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.environ.get("BLOCKVAULT_TEST_ALL_BACKENDS") == "1":
        return
    dropped = [
        item for item in items
        if "server-s3" in item.name and not any(t in item.nodeid for t in SERVER_S3_TESTS)
    ]
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = [item for item in items if item not in dropped]


@pytest.fixture(params=["directory", "server", "s3", "server-s3"])
def repo_location(request: pytest.FixtureRequest, tmp_path: Path,
                  monkeypatch: pytest.MonkeyPatch) -> str:
    """A repository location: a directory (made on first use), a fresh repository
    server's, a fresh bucket on the real RGW, or a server whose datastore is a bucket.

    Tests that take it run once against each backend; with the server, this process's
    environment names the node, its token file and the pinned fingerprint; with S3, the
    endpoint and keys.
    """
    if request.param == "directory":
        return str(tmp_path / "repo")
    if request.param == "s3":
        return bucket_repository(request.getfixturevalue("s3_location"))
    if request.param == "server-s3":
        server = RepoServer(tmp_path / "server", request.getfixturevalue("s3_location"))
        request.addfinalizer(server.stop)
        return server_repository(server.start(), monkeypatch)
    return server_repository(request.getfixturevalue("repo_server"), monkeypatch)
