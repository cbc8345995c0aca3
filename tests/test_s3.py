"""A repository in a bucket of a real S3 server (Ceph's RGW on 127.0.0.1), as users meet it.

The round trips, increments, replay, query, check and prune run against S3 through
``repo_location`` in their own modules; here is what only a bucket has: the objects
it holds, its one-line errors, its lock objects and the requests check and prune make.
Nothing here fakes S3.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time

import pytest
from cliutil import ROOT, blockvault
from conftest import bucket_repository
from imagekit import device_digest, random_volume
from s3kit import SCRIPT, Gateway, bucket_keys, new_bucket_location
from serverkit import free_port

pytestmark = pytest.mark.loop


def one_line(text: str) -> str:
    lines = text.strip().splitlines()
    assert len(lines) == 1, text
    return lines[0]


def test_a_backup_lands_in_the_bucket_and_restores_from_it(loopkit, s3_location, tmp_path):
    repo = bucket_repository(s3_location)
    vol = random_volume(loopkit)
    res = blockvault("backup", "image", vol.device, "--repo", repo, "--json")
    assert res.rc == 0, res.err
    image = res.json()["image_id"]
    prefix = s3_location.split("/", 3)[3]
    keys = bucket_keys(s3_location)
    chunks = [k for k in keys if k.startswith(f"{prefix}/chunks/")]
    assert f"{prefix}/config.json" in keys
    assert f"{prefix}/images/{image[:2]}/{image}" in keys
    assert len(chunks) == res.json()["chunks_new"] == 5
    assert all(k.split("/")[2] == k.split("/")[3][:2] for k in chunks)  # hashed fan-out
    assert not any(k.startswith(f"{prefix}/locks/") for k in keys)  # released
    dest = loopkit.attach(loopkit.image("24M"))
    res = blockvault("restore", "image", vol.device, dest, "--confirm", dest, "--repo", repo)
    assert res.rc == 0, res.err
    assert device_digest(dest) == device_digest(vol.device)


def test_a_second_init_of_a_bucket_location_is_refused(s3_location):
    bucket_repository(s3_location)
    res = blockvault("repo", "init", "--repo", s3_location, "--encryption", "none")
    assert res.rc == 12
    assert "already holds a blockvault repository" in one_line(res.err)


def test_a_new_bucket_repository_is_encrypted_unless_plain_is_asked_for(s3_location, tmp_path):
    passphrase = tmp_path / "pass"
    passphrase.write_text("correct horse battery staple\n")
    res = blockvault("repo", "init", "--repo", s3_location, "--json",
                     env={"BLOCKVAULT_PASSPHRASE_FILE": str(passphrase)})
    assert res.rc == 0, res.err
    assert res.json()["encryption"] == "aes-256-gcm"


def test_a_missing_bucket_wrong_keys_and_no_endpoint_are_one_line_each(s3_location):
    bucket_repository(s3_location)
    missing = "s3://bv-no-such-bucket-here/repo"
    res = blockvault("query", "image", "--repo", missing)
    assert res.rc == 12
    assert "bucket bv-no-such-bucket-here does not exist" in one_line(res.err)

    res = blockvault("query", "image", "--repo", s3_location,
                     env={"AWS_SECRET_ACCESS_KEY": "not-the-secret"})
    assert res.rc == 12
    line = one_line(res.err)
    assert "refused" in line and "AWS_SECRET_ACCESS_KEY" in line
    assert "not-the-secret" not in res.err + res.out

    nowhere = f"http://127.0.0.1:{free_port()}"
    res = blockvault("query", "image", "--repo", s3_location,
                     env={"AWS_ENDPOINT_URL": nowhere, "AWS_MAX_ATTEMPTS": "2"})
    assert res.rc == 12
    assert f"cannot reach the S3 endpoint {nowhere}" in one_line(res.err)

    res = blockvault("query", "image", "--repo", "s3://Bad_Bucket/x")
    assert res.rc == 12
    assert "not a bucket address" in one_line(res.err)


def test_prune_frees_unnamed_chunks_in_few_requests_and_waits_for_a_backup(loopkit, s3_location):
    from core.repo.s3 import S3Store

    repo = bucket_repository(s3_location)
    vol = random_volume(loopkit)
    image = blockvault("backup", "image", vol.device, "--repo", repo, "--json").json()["image_id"]
    # While a backup holds its lock object, prune gives way and deletes nothing.
    with S3Store(repo).lock():
        res = blockvault("repo", "prune", "--repo", repo)
        assert res.rc == 12
        assert "busy" in one_line(res.err)
    assert blockvault("delete", "backup", "--objtype", "image", "--image", image,
                      "--repo", repo).rc == 0
    res = blockvault("repo", "prune", "--repo", repo, "--json")
    assert res.rc == 0, res.err
    pruned = res.json()
    assert pruned["chunks_deleted"] == 5 and pruned["bytes_freed"] > 20 << 20
    # Lock (put, list, delete), manifests listed, chunks listed with their sizes, one
    # DeleteObjects: not a request per chunk.
    assert pruned["requests"] <= 10, pruned
    assert not [k for k in bucket_keys(s3_location) if "/chunks/" in k]
    check = blockvault("repo", "check", "--repo", repo, "--json")
    assert check.rc == 0 and check.json()["requests"] >= 1


def test_the_consoles_header_names_the_bucket_and_whether_it_answers(s3_location):
    from core.repo.repository import repository_status

    missing = repository_status(s3_location)
    assert not missing.answers and "holds no repository yet" in (missing.problem or "")
    bucket_repository(s3_location)
    status = repository_status(s3_location)
    assert status.answers and status.where == f"bucket {s3_location.removeprefix('s3://')}"


def test_a_gateway_killed_mid_backup_and_restarted_leaves_nothing_partial(loopkit, tmp_path):
    """SIGKILL RGW while a 200 MiB backup uploads, start it again two seconds later.

    A cluster of this test's own (tests/ceph-rgw.sh kill-gateway / start-gateway), not
    the run's: the backup either rides out the outage (botocore's retries) and restores
    bit-identical, or fails in one line with no image listed; the bucket checks clean.
    """
    if shutil.which("radosgw") is None:
        pytest.skip("radosgw is not installed")
    gateway = Gateway.start()
    try:
        env = {**os.environ, **gateway.env}
        cluster = {**os.environ, "CEPH_S3_DIR": str(gateway.directory)}
        location = new_bucket_location(gateway)
        assert blockvault("repo", "init", "--repo", location, "--encryption", "none",
                          env=env).rc == 0
        vol = random_volume(loopkit, 200)
        backup = subprocess.Popen(
            [sys.executable, "-m", "tui.cli", "backup", "image", vol.device, "--repo", location,
             "--no-agent", "--json"],
            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        try:
            bucket, prefix = location.removeprefix("s3://").split("/", 1)
            client = gateway.client()
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                listed = client.list_objects_v2(Bucket=bucket, Prefix=f"{prefix}/chunks/")
                if listed.get("KeyCount", 0) >= 8:
                    break
                time.sleep(0.05)
            subprocess.run(["bash", str(SCRIPT), "kill-gateway"], env=cluster, check=True)
            assert backup.poll() is None, "the backup ended before the gateway was killed"
            time.sleep(2.0)
            subprocess.run(["bash", str(SCRIPT), "start-gateway"], env=cluster, check=True,
                           capture_output=True)
            _out, err = backup.communicate(timeout=240)
        finally:
            if backup.poll() is None:
                backup.kill()
                backup.wait()
        images = blockvault("query", "image", vol.device, "--repo", location, "--json", env=env)
        if backup.returncode == 0:
            dest = loopkit.attach(loopkit.image("200M"))
            res = blockvault("restore", "image", vol.device, dest, "--confirm", dest,
                             "--repo", location, "--no-agent", env=env, timeout=300)
            assert res.rc == 0, res.err
            assert device_digest(dest) == device_digest(vol.device)
        else:
            assert backup.returncode == 12, err
            one_line(err)
            assert images.rc != 0 or images.json()["images"] == [], images.out
        check = blockvault("repo", "check", "--repo", location, "--json", env=env, timeout=300)
        assert check.rc == 0, check.out
    finally:
        gateway.stop()


def test_repo_init_makes_a_missing_bucket_in_the_configured_region(s3_location):
    import uuid

    fresh = f"s3://bv-test-made-{uuid.uuid4().hex[:10]}/repo"
    res = blockvault("repo", "init", "--repo", fresh, "--encryption", "none", "--json")
    assert res.rc == 0, res.err
    assert blockvault("query", "image", "--repo", fresh, "--json").json()["images"] == []


def test_prune_never_touches_what_is_named_like_no_chunk(loopkit, s3_location):
    repo = bucket_repository(s3_location)
    vol = random_volume(loopkit)
    assert blockvault("backup", "image", vol.device, "--repo", repo).rc == 0
    prefix = s3_location.split("/", 3)[3]
    bucket = s3_location.split("/")[2]
    client = Gateway.from_environment().client()
    strays = [f"{prefix}/chunks/ZZ/ZZ-notes.txt", f"{prefix}/chunks/AB/{'AB' * 32}"]
    for key in strays:
        client.put_object(Bucket=bucket, Key=key, Body=b"someone else's")
    res = blockvault("repo", "prune", "--repo", repo, "--json")
    assert res.rc == 0, res.err
    assert res.json()["chunks_deleted"] == 0
    assert set(strays) <= set(bucket_keys(s3_location))


def test_a_lock_is_judged_by_the_buckets_clock_not_this_hosts(s3_location, monkeypatch):
    """A prune's lock written a moment ago holds off a backup on a host whose clock runs
    two hours fast. The fast clock is a fake (``time`` in core.repo.s3 only): the machine
    cannot give one process a clock of its own."""
    import types

    from core.repo import s3
    from core.repo.store import RepositoryError

    repo = bucket_repository(s3_location)
    prefix, bucket = s3_location.split("/", 3)[3], s3_location.split("/")[2]
    client = Gateway.from_environment().client()
    theirs = f"{prefix}/locks/20261204T000000-x-{'0' * 32}"
    client.put_object(Bucket=bucket, Key=theirs, Body=b"{}")
    fast = types.SimpleNamespace(
        time=lambda: time.time() + 7200, monotonic=time.monotonic, sleep=time.sleep
    )
    monkeypatch.setattr(s3, "time", fast)
    store = s3.S3Store(repo)
    with pytest.raises(RepositoryError, match="busy"), store.lock():
        pass
    # Two seconds later by the bucket's clock, a lock that goes stale after one is gone.
    time.sleep(2.5)
    monkeypatch.setattr(s3, "LOCK_STALE", 1.0)
    with store.lock():
        pass
    assert theirs in bucket_keys(s3_location)  # a stale lock is ignored, not removed


def test_a_holder_whose_lock_is_not_refreshed_stops_writing(s3_location, monkeypatch):
    """A lock that could not be refreshed for half its stale time may soon be taken for a
    dead process's: its holder commits and deletes nothing more."""
    from core.repo import s3
    from core.repo.store import RepositoryWriteFailed

    repo = bucket_repository(s3_location)
    store = s3.S3Store(repo)
    monkeypatch.setattr(s3, "LOCK_STALE", 2.0)
    monkeypatch.setattr(s3, "LOCK_REFRESH", 0.2)
    with store.lock():
        time.sleep(1.5)  # refreshed all along: still writing
        store.commit("images/20261204T000000Z-aaaaaa", b"kept", [])
    monkeypatch.setattr(s3, "LOCK_REFRESH", 3600.0)
    with store.lock():
        time.sleep(1.2)
        with pytest.raises(RepositoryWriteFailed, match="could not be refreshed"):
            store.commit("images/20261204T000001Z-bbbbbb", b"lost", [])
        with pytest.raises(RepositoryWriteFailed, match="could not be refreshed"):
            store.delete_many(["images/20261204T000000Z-aaaaaa"])
    names = [k.rsplit("/", 1)[-1] for k in bucket_keys(s3_location) if "/images/" in k]
    assert names == ["20261204T000000Z-aaaaaa"]


def test_two_servers_over_one_bucket_serve_the_same_nodes(loopkit, s3_location, tmp_path):
    """Scale-out: the registry, owners and sessions live in the bucket, not in a server."""
    from serverkit import RepoServer

    one = RepoServer(tmp_path / "one", s3_location)
    two = RepoServer(tmp_path / "two", s3_location)
    try:
        one.start()
        two.start()
        token = one.node("a")
        (two.root / "a.token").write_text(token.read_text())
        assert one.bv("a", "repo", "init", "--encryption", "none").rc == 0
        vol = random_volume(loopkit)
        made = one.bv("a", "backup", "image", vol.device, "--json")
        assert made.rc == 0, made.err
        listed = two.bv("a", "query", "image", "--json").json()["images"]
        assert [i["id"] for i in listed] == [made.json()["image_id"]]
        dest = loopkit.attach(loopkit.image("24M"))
        res = two.bv("a", "restore", "image", vol.device, dest, "--confirm", dest)
        assert res.rc == 0, res.err
        assert device_digest(dest) == device_digest(vol.device)

        # Node b, registered through the bucket, backs the same data up through server two.
        b_token = two.node("b")
        (one.root / "b.token").write_text(b_token.read_text())
        chunks = [k for k in bucket_keys(s3_location) if "/chunks/" in k]
        res = two.bv("b", "backup", "image", vol.device, "--json")
        assert res.rc == 0, res.err
        assert [k for k in bucket_keys(s3_location) if "/chunks/" in k] == chunks
        assert one.bv("b", "query", "image", "--json").json()["images"]
        # b cannot read a's image through either server.
        a_image = made.json()["image_id"]
        for server in (one, two):
            res = server.bv("b", "restore", "image", vol.device, dest, "--confirm", dest,
                            "--image", a_image)
            assert res.rc == 12, res.err
            one_line(res.err)

        # A node removed through the bucket is refused by both servers within seconds.
        res = blockvault("serve", "node", "remove", "b", "--store", s3_location)
        assert res.rc == 0, res.err
        time.sleep(2.5)
        for server in (one, two):
            res = server.bv("b", "query", "image")
            assert res.rc == 12 and "revoked" in one_line(res.err), res.err
    finally:
        one.stop()
        two.stop()


def test_a_bucket_servers_session_outlives_the_server(loopkit, s3_location, tmp_path):
    """SIGKILL a server over a bucket mid-backup and start it again: what it knew of the
    session (the node, the chunks it acknowledged) was in the bucket, so it resumes the
    session and the backup finishes with nothing sent twice that was acknowledged."""
    import signal

    from serverkit import RepoServer

    server = RepoServer(tmp_path / "server", s3_location)
    backup = None
    try:
        server.start()
        assert server.bv("a", "repo", "init", "--encryption", "none").rc == 0
        vol = random_volume(loopkit, 200)
        env = {**os.environ, **server.client_env("a"), "BLOCKVAULT_COMMRESTARTDURATION": "1"}
        backup = subprocess.Popen(
            [sys.executable, "-m", "tui.cli", "backup", "image", vol.device, "--json"],
            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if len([k for k in bucket_keys(s3_location) if "/chunks/" in k]) >= 10:
                break
            time.sleep(0.1)
        server.stop(signal.SIGKILL)
        assert backup.poll() is None, "the backup ended before the server was killed"
        time.sleep(1.0)
        server.start()
        _out, err = backup.communicate(timeout=240)
        assert backup.returncode == 0, err
        assert "resumed session" in server.log.read_text()
        check = blockvault("repo", "check", "--repo", s3_location, "--json")
        assert check.rc == 0, check.out
        dest = loopkit.attach(loopkit.image("200M"))
        res = server.bv("a", "restore", "image", vol.device, dest, "--confirm", dest)
        assert res.rc == 0, res.err
        assert device_digest(dest) == device_digest(vol.device)
        left = [k for k in bucket_keys(s3_location) if "/server/sessions/" in k]
        assert left == []  # the session's records went with its commit
    finally:
        if backup is not None and backup.poll() is None:
            backup.kill()
            backup.wait()
        server.stop()
