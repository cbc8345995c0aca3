"""The repository server as its users meet it: nodes, tokens, TLS pinning, refusals, a crash.

Every server is a real ``blockvault serve`` on 127.0.0.1 with its self-signed
certificate, over a datastore of the test's own; every volume is a loop device the
test made. Nothing here fakes the network or the server.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from cliutil import ROOT, blockvault
from imagekit import device_digest, random_volume
from serverkit import RepoServer, free_port, refusals
from test_agent import agents  # noqa: F401  (the fixture)

pytestmark = pytest.mark.loop


def one_line(text: str) -> str:
    """Return the single line of a refusal (and fail when there are more)."""
    lines = text.strip().splitlines()
    assert len(lines) == 1, text
    return lines[0]


def stored_bytes(store: Path) -> int:
    return sum(p.stat().st_size for p in (store / "chunks").rglob("*") if p.is_file())


@pytest.fixture
def server(repo_server: RepoServer) -> RepoServer:
    """A server whose (plain) repository node ``a`` made."""
    assert repo_server.bv("a", "repo", "init", "--encryption", "none").rc == 0
    return repo_server


def test_another_node_can_neither_list_nor_read_nor_restore_an_image(loopkit, server):
    vol = random_volume(loopkit)
    image = server.bv("a", "backup", "image", vol.device, "--json").json()["image_id"]
    assert server.bv("b", "query", "image", "--json").json()["images"] == []
    dest = loopkit.attach(loopkit.image("24M"))
    res = server.bv("b", "restore", "image", vol.device, dest, "--image", image, "--confirm", dest)
    assert res.rc == 12
    one_line(res.err)
    # The object itself, asked for directly with B's token: 403, and logged with the node.
    token = (server.root / "b.token").read_text().strip()
    response = httpx.get(f"{server.url}/v1/objects/images/{image}", verify=False,
                         headers={"authorization": f"Bearer {token}"})
    assert response.status_code == 403
    assert "another node" in response.json()["error"]
    assert any("node b" in line and image in line for line in refusals(server))
    assert device_digest(dest) != device_digest(vol.device)
    # A still restores it.
    res = server.bv("a", "restore", "image", vol.device, dest, "--confirm", dest)
    assert res.rc == 0, res.err
    assert device_digest(dest) == device_digest(vol.device)


def test_a_second_node_backing_up_the_same_data_stores_almost_nothing_new(loopkit, server):
    vol = random_volume(loopkit)
    assert server.bv("a", "backup", "image", vol.device).rc == 0
    before = stored_bytes(server.store)
    res = server.bv("b", "backup", "image", vol.device, "--json")
    assert res.rc == 0, res.err
    assert stored_bytes(server.store) == before  # every chunk was there: stored once
    # B had to send its bytes (it may not claim chunks it never had), and now knows them.
    assert res.json()["chunks_new"] == 5
    again = server.bv("b", "backup", "image", vol.device, "--json").json()
    assert again["chunks_new"] == 0 and again["chunks_dedup"] == 5


def test_an_unchanged_re_backup_sends_almost_nothing(loopkit, server):
    vol = random_volume(loopkit, 64)
    assert server.bv("a", "backup", "image", vol.device).rc == 0
    log_before = server.log.read_text()
    again = server.bv("a", "backup", "image", vol.device, "--json").json()
    assert again["chunks_new"] == 0 and again["bytes_stored_new"] == 0
    tail = server.log.read_text()[len(log_before):]
    assert "0 new in the session" in tail


def test_a_removed_node_is_refused_in_one_line(server):
    assert server.bv("a", "query", "image").rc == 0
    res = blockvault("serve", "node", "remove", "a", "--store", str(server.store))
    assert res.rc == 0, res.err
    res = server.bv("a", "query", "image")
    assert res.rc == 12
    assert "node a was removed" in one_line(res.err)


def test_a_wrong_token_a_wrong_fingerprint_and_no_server_are_one_line_each(server, tmp_path):
    bad = tmp_path / "bad.token"
    bad.write_text("bvt1_not-a-token-anyone-issued\n")
    env = {**server.client_env("a"), "BLOCKVAULT_TOKEN_FILE": str(bad)}
    res = blockvault("query", "image", env=env)
    assert res.rc == 12 and "does not know this token" in one_line(res.err)

    wrong = "AB:" * 31 + "AB"
    res = blockvault("query", "image", env={**server.client_env("a"),
                                             "BLOCKVAULT_FINGERPRINT": wrong})
    line = one_line(res.err)
    assert res.rc == 12 and wrong in line and server.fingerprint in line

    port = free_port()
    res = blockvault("query", "image", env={**server.client_env("a"),
                                             "BLOCKVAULT_REPO": f"https://127.0.0.1:{port}"})
    assert res.rc == 12 and "cannot reach the repository server" in one_line(res.err)
    # Neither the token nor its file's content was printed anywhere.
    token = (server.root / "a.token").read_text().strip()
    assert token not in res.err + res.out


def test_an_upload_that_does_not_match_its_id_is_refused(server):
    token = (server.root / "a.token").read_text().strip()
    with httpx.Client(base_url=server.url, verify=False,
                      headers={"authorization": f"Bearer {token}"}) as client:
        sid = client.post("/v1/sessions").json()["session"]
        from core.repo.format import chunk_digest, encode_chunk

        header, payload = encode_chunk(b"the real content" * 1000)
        lie = chunk_digest(b"other content")
        response = client.put(f"/v1/sessions/{sid}/chunks/{lie.hex()}",
                              content=bytes(header) + bytes(payload))
        assert response.status_code == 422
        assert "does not match its id" in response.json()["error"]
        assert not (server.store / "chunks" / lie.hex()[:2] / lie.hex()).exists()
        too_big = client.put(f"/v1/sessions/{sid}/chunks/{lie.hex()}",
                             content=b"x" * (8 << 20))
        assert too_big.status_code == 413
    assert any("does not match its id" in line for line in refusals(server))


def test_a_node_cannot_commit_a_manifest_naming_another_nodes_chunks(loopkit, server):
    vol = random_volume(loopkit)
    image = server.bv("a", "backup", "image", vol.device, "--json").json()["image_id"]
    stolen = (server.store / "images" / image[:2] / image).read_bytes()
    server.node("b")
    token = (server.root / "b.token").read_text().strip()
    with httpx.Client(base_url=server.url, verify=False,
                      headers={"authorization": f"Bearer {token}"}) as client:
        sid = client.post("/v1/sessions").json()["session"]
        forged = image[:-6] + "ffffff"
        response = client.post(f"/v1/sessions/{sid}/commit/images/{forged}", content=stolen)
        assert response.status_code == 403
        assert "neither uploaded" in response.json()["error"]
    assert server.bv("b", "query", "image", "--json").json()["images"] == []


def test_a_node_token_cannot_delete_but_an_admin_token_can(loopkit, server):
    vol = random_volume(loopkit)
    image = server.bv("a", "backup", "image", vol.device, "--json").json()["image_id"]
    res = server.bv("a", "delete", "backup", "--objtype", "image", "--image", image)
    assert res.rc == 12 and "may not delete" in one_line(res.err)
    assert [e["id"] for e in server.bv("a", "query", "image", "--json").json()["images"]] == [
        image
    ]
    server.node("boss", admin=True)
    res = server.bv("boss", "delete", "backup", "--objtype", "image", "--image", image)
    assert res.rc == 0, res.err
    assert server.bv("a", "query", "image", "--json").json()["images"] == []


def test_plain_http_is_refused_off_loopback(tmp_path):
    res = blockvault("serve", "--store", str(tmp_path / "s"), "--listen", "0.0.0.0:1",
                     "--insecure-http", "--state", str(tmp_path / "state"))
    assert res.rc == 12 and "loopback address only" in one_line(res.err)
    # Nor does a client send its token in the clear to a server off loopback.
    res = blockvault("query", "image", "--repo", "http://192.0.2.1:8080",
                     env={"BLOCKVAULT_TOKEN": "tok", "BLOCKVAULT_NODE": "a"})
    assert res.rc == 12 and "in the clear" in one_line(res.err)


def test_an_object_larger_than_its_kind_can_be_is_damaged_not_read(loopkit, server):
    """The server is trusted for availability, not for sizes: the client refuses, unread,
    a body larger than any object of its kind (here a chunk file grown on the store)."""
    from core.repo.format import max_stored

    vol = random_volume(loopkit)
    assert server.bv("a", "backup", "image", vol.device).rc == 0
    victim = next(p for p in (server.store / "chunks").rglob("*") if p.is_file())
    with open(victim, "r+b") as f:
        f.truncate(max_stored("chunks/x") + 1)
    res = server.bv("a", "repo", "check", "--json")
    assert res.rc != 0
    assert f"object chunks/{victim.name}" in res.out and "larger than any chunk" in res.out


def test_login_saves_a_root_only_file_and_then_the_url_is_enough(loopkit, server, tmp_path):
    login = tmp_path / "login.json"
    token = server.node("c")
    env = {"BLOCKVAULT_LOGIN_FILE": str(login), "BLOCKVAULT_TOKEN_FILE": str(token)}
    res = blockvault("login", server.url, "--node", "c", "--fingerprint", server.fingerprint,
                     "--json", env=env)
    assert res.rc == 0, res.err
    assert login.stat().st_mode & 0o077 == 0
    assert token.read_text().strip() not in res.out
    vol = random_volume(loopkit)
    res = blockvault("backup", "image", vol.device, "--repo", server.url,
                     env={"BLOCKVAULT_LOGIN_FILE": str(login)})
    assert res.rc == 0, res.err


def test_a_server_killed_mid_backup_and_restarted_lets_the_backup_finish(loopkit, server):
    """SIGKILL the server while a 256 MiB backup uploads; restart it on the same port."""
    vol = random_volume(loopkit, 260)
    env = {**os.environ, **server.client_env("a"), "BLOCKVAULT_COMMRESTARTDURATION": "1"}
    backup = subprocess.Popen(
        [sys.executable, "-m", "tui.cli", "backup", "image", vol.device, "--json"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while stored_bytes(server.store) < 40 << 20 and time.monotonic() < deadline:
            time.sleep(0.02)
        server.stop(signal.SIGKILL)
        assert backup.poll() is None, "the backup ended before the server was killed"
        time.sleep(1.0)
        server.start()
        _out, err = backup.communicate(timeout=180)
    finally:
        if backup.poll() is None:
            backup.kill()
            backup.wait()
    assert backup.returncode == 0, err
    assert "resumed session" in server.log.read_text()
    check = blockvault("repo", "check", "--repo", str(server.store), "--json")
    assert check.rc == 0, check.out
    dest = loopkit.attach(loopkit.image("260M"))
    res = server.bv("a", "restore", "image", vol.device, dest, "--confirm", dest)
    assert res.rc == 0, res.err
    assert device_digest(dest) == device_digest(vol.device)


def test_a_client_killed_mid_backup_leaves_nothing_visible(loopkit, server):
    vol = random_volume(loopkit, 132)
    env = {**os.environ, **server.client_env("a")}
    backup = subprocess.Popen(
        [sys.executable, "-m", "tui.cli", "backup", "image", vol.device],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    while stored_bytes(server.store) < 20 << 20 and time.monotonic() < deadline:
        time.sleep(0.02)
    backup.kill()
    backup.wait()
    assert server.bv("a", "query", "image", "--json").json()["images"] == []
    assert blockvault("repo", "check", "--repo", str(server.store)).rc == 0
    assert list((server.store / "server" / "owners").rglob("*.tmp*")) == []


def test_an_unreachable_server_mid_backup_fails_in_one_line_after_its_retry_time(loopkit, server):
    vol = random_volume(loopkit, 260)
    env = {**os.environ, **server.client_env("a"), "BLOCKVAULT_COMMRESTARTDURATION": "0.05"}
    backup = subprocess.Popen(
        [sys.executable, "-m", "tui.cli", "backup", "image", vol.device],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    deadline = time.monotonic() + 60
    while stored_bytes(server.store) < 20 << 20 and time.monotonic() < deadline:
        time.sleep(0.02)
    server.stop(signal.SIGKILL)
    _out, err = backup.communicate(timeout=60)
    assert backup.returncode == 12
    assert "cannot reach the repository server" in one_line(err)
    server.start()
    assert server.bv("a", "query", "image", "--json").json()["images"] == []


def test_the_agent_backs_up_and_restores_through_the_server(
    loopkit, server, agents, monkeypatch  # noqa: F811  (agents: the fixture)
):
    """The agent serves the server's repository: the command line's jobs run there."""
    for name, value in server.client_env("a").items():
        monkeypatch.setenv(name, value)
    agent = agents.start(repo=server.url)
    vol = random_volume(loopkit)
    env = {"BLOCKVAULT_AGENT_SOCKET": str(agent.socket)}
    res = blockvault("backup", "image", vol.device, "--json", env=env)
    assert res.rc == 0, res.err
    image = res.json()["image_id"]
    assert [e["id"] for e in server.bv("a", "query", "image", "--json").json()["images"]] == [
        image
    ]
    jobs = blockvault("jobs", "--json", env=env).json()["jobs"]
    assert [j["report"]["image_id"] for j in jobs] == [image]  # it ran in the agent
    dest = loopkit.attach(loopkit.image("24M"))
    res = blockvault("restore", "image", vol.device, dest, "--confirm", dest, env=env)
    assert res.rc == 0, res.err
    assert device_digest(dest) == device_digest(vol.device)


def test_the_clients_own_connections_survive_a_restarted_server_and_are_closed_with_it(
    loopkit, server, monkeypatch
):
    """Reads and uploads go over the client's keep-alive connections (not httpx's): one
    the server dropped is replaced; a refusal on them still says why; closing the store
    closes them all."""
    import threading

    from core.repo.format import chunk_digest, chunk_key, encode_chunk
    from core.repo.remote import Forbidden, connect

    vol = random_volume(loopkit)
    image = server.bv("a", "backup", "image", vol.device, "--json").json()["image_id"]
    for name, value in server.client_env("a").items():
        monkeypatch.setenv(name, value)
    store = connect(server.url)
    manifest = store.get(f"images/{image}")
    assert len(store.fast._sockets) == 1
    server.stop()
    server.start()  # the same port: the connection kept alive is now dead
    assert store.get(f"images/{image}") == manifest
    # An upload from a worker thread that then ends: its connection is closed with the
    # next thread's first one, not kept for the store's life.
    header, payload = encode_chunk(b"fresh content " * 5000)
    digest = chunk_digest(b"fresh content " * 5000)
    worker = threading.Thread(target=store.put, args=(chunk_key(digest), [header, payload]))
    worker.start()
    worker.join()
    sessions = (server.store / "server" / "sessions").glob("*.chunks")
    assert any(digest in path.read_bytes() for path in sessions)  # acknowledged
    threads = [threading.Thread(target=store.get, args=(f"images/{image}",)) for _ in range(3)]
    for t in threads:
        t.start()
        t.join()
    assert len(store.fast._sockets) <= 2  # this thread's and the last worker's
    store.close()
    assert store.fast._sockets == {}
    # A node refused on these connections hears why, in one line.
    for name, value in server.client_env("b").items():
        monkeypatch.setenv(name, value)
    other = connect(server.url)
    with pytest.raises(Forbidden, match="another node"):
        other.get(f"images/{image}")
    other.close()
