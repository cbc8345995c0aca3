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
