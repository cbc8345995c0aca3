"""A real S3 server for the tests: Ceph's RADOS Gateway on 127.0.0.1 (tests/ceph-rgw.sh).

``tests/run`` (and so CI) starts one cluster before pytest and names its directory in
``$BLOCKVAULT_TEST_RGW`` (its endpoint and keys are in the ``env`` file there); a pytest
run without it starts a private cluster for the session when the daemons are
installed, and stops it at the end. Without the daemons the S3 tests skip, unless
``BLOCKVAULT_REQUIRE_S3=1`` (CI) makes that a failure. Each test gets a fresh bucket.
The tests never use an S3 the user's own ``AWS_*`` variables point at: only a gateway
of this run, whose variables the ``s3_location`` fixture sets for the test.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import tempfile
import uuid
from pathlib import Path
from typing import Any

import pytest
from serverkit import datastore_of

SCRIPT = Path(__file__).resolve().parent / "ceph-rgw.sh"
RUN_ENV = "BLOCKVAULT_TEST_RGW"
ENV_NAMES = ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")


class Gateway:
    """The endpoint and keys of one running RGW (ours to stop only if we started it)."""

    def __init__(self, env: dict[str, str], directory: str | None = None) -> None:
        self.env = env
        self.directory = directory

    @classmethod
    def from_environment(cls) -> Gateway | None:
        """The gateway whose ``AWS_*`` variables a test's fixture set (None: none was)."""
        if os.environ.get("AWS_ENDPOINT_URL") and os.environ.get("AWS_ACCESS_KEY_ID"):
            return cls({name: os.environ[name] for name in ENV_NAMES if name in os.environ})
        return None

    @classmethod
    def of_run(cls) -> Gateway | None:
        """The gateway tests/run started for this run (``$BLOCKVAULT_TEST_RGW``), if any."""
        directory = os.environ.get(RUN_ENV)
        if not directory:
            return None
        env = _parse_exports(Path(directory, "env").read_text())
        return cls(env)

    @classmethod
    def start(cls) -> Gateway:
        """Start a private cluster in a temporary directory (tests/ceph-rgw.sh start)."""
        directory = tempfile.mkdtemp(prefix="blockvault-rgw-")
        os.rmdir(directory)  # the script makes it, and refuses one that exists
        res = subprocess.run(
            ["bash", str(SCRIPT), "start"], env={**os.environ, "CEPH_S3_DIR": directory},
            capture_output=True, text=True, timeout=180,
        )
        if res.returncode != 0:
            subprocess.run(["bash", str(SCRIPT), "stop"],
                           env={**os.environ, "CEPH_S3_DIR": directory},
                           capture_output=True, timeout=60)
            raise RuntimeError(f"the test RGW did not start: {res.stderr[-2000:]}")
        return cls(_parse_exports(res.stdout), directory)

    def stop(self) -> None:
        if self.directory:
            subprocess.run(["bash", str(SCRIPT), "stop"],
                           env={**os.environ, "CEPH_S3_DIR": self.directory},
                           capture_output=True, timeout=60)
            self.directory = None

    def client(self) -> Any:
        import boto3
        from botocore.config import Config

        return boto3.session.Session().client(
            "s3", endpoint_url=self.env["AWS_ENDPOINT_URL"],
            aws_access_key_id=self.env["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=self.env["AWS_SECRET_ACCESS_KEY"],
            region_name=self.env.get("AWS_DEFAULT_REGION", "default"),
            config=Config(s3={"addressing_style": "path"}),
        )


def _parse_exports(text: str) -> dict[str, str]:
    env: dict[str, str] = {}
    for line in text.splitlines():
        name, _, value = line.removeprefix("export ").partition("=")
        if name in ENV_NAMES:
            env[name] = shlex.split(value)[0]
    return env


def gateway_or_skip() -> Gateway:
    """Return the run's RGW, starting a private one when the daemons are installed."""
    found = Gateway.of_run()
    if found is not None:
        return found
    if shutil.which("radosgw") is None:
        if os.environ.get("BLOCKVAULT_REQUIRE_S3") == "1":
            pytest.fail("BLOCKVAULT_REQUIRE_S3=1 but no RGW runs and radosgw is not installed")
        pytest.skip("no S3 server: run tests/run (it starts Ceph's RGW), or install radosgw")
    return Gateway.start()


def new_bucket_location(gateway: Gateway, prefix: str = "repo") -> str:
    """Return ``s3://BUCKET/PREFIX`` of a bucket made for this test alone."""
    bucket = f"bv-test-{uuid.uuid4().hex[:12]}"
    gateway.client().create_bucket(Bucket=bucket)
    return f"s3://{bucket}/{prefix}"


def _split(location: str, key: str) -> tuple[str, str]:
    bucket, _, prefix = location.removeprefix("s3://").partition("/")
    kind, name = key.split("/", 1)
    return bucket, f"{prefix}/{kind}/{name[:2]}/{name}" if prefix else f"{kind}/{name[:2]}/{name}"


def _gateway() -> Gateway:
    found = Gateway.from_environment()
    assert found is not None, "an s3:// location without the AWS variables of its gateway"
    return found


def _path(location: str, key: str) -> Path:
    kind, name = key.split("/", 1)
    return Path(datastore_of(location), kind, name[:2], name)


def read_object(location: str, key: str) -> bytes:
    """Return object ``key`` as stored at ``location`` (a directory, a server's, a bucket)."""
    location = datastore_of(location)
    if not location.startswith("s3://"):
        return _path(location, key).read_bytes()
    bucket, s3key = _split(location, key)
    return bytes(_gateway().client().get_object(Bucket=bucket, Key=s3key)["Body"].read())


def overwrite_object(location: str, key: str, data: bytes) -> None:
    """Replace an object behind blockvault's back: the damage a test inflicts."""
    location = datastore_of(location)
    if not location.startswith("s3://"):
        _path(location, key).write_bytes(data)
        return
    bucket, s3key = _split(location, key)
    _gateway().client().put_object(Bucket=bucket, Key=s3key, Body=data)


def remove_object(location: str, key: str) -> None:
    """Remove an object behind blockvault's back."""
    location = datastore_of(location)
    if not location.startswith("s3://"):
        _path(location, key).unlink()
        return
    bucket, s3key = _split(location, key)
    _gateway().client().delete_object(Bucket=bucket, Key=s3key)


def bucket_keys(location: str) -> list[str]:
    """Every key under the bucket location's prefix, as stored."""
    bucket, _, prefix = location.removeprefix("s3://").partition("/")
    paginator = _gateway().client().get_paginator("list_objects_v2")
    pages = paginator.paginate(Bucket=bucket, Prefix=prefix)
    return [str(e["Key"]) for page in pages for e in page.get("Contents", [])]


__all__ = [
    "Gateway",
    "bucket_keys",
    "gateway_or_skip",
    "new_bucket_location",
    "overwrite_object",
    "read_object",
    "remove_object",
]


def object_keys(location: str, kind: str) -> list[str]:
    """The keys (``KIND/NAME``) of every object of ``kind`` at ``location``."""
    location = datastore_of(location)
    if not location.startswith("s3://"):
        top = Path(location, kind)
        return sorted(f"{kind}/{p.name}" for p in top.glob("*/*") if p.is_file())
    parts = [k.split("/") for k in bucket_keys(location)]
    return sorted(f"{kind}/{p[-1]}" for p in parts if len(p) >= 3 and p[-3] == kind)


def chunk_place(location: str, digest: str) -> tuple[str, int, int]:
    """Where chunk ``digest`` (hex) is stored: ``(key, offset, length)`` of its own object,
    or of its piece in a pack (found by reading each pack's index, as blockvault does)."""
    from core.repo.packs import parse_tail

    key = f"chunks/{digest}"
    if key in object_keys(location, "chunks"):
        return key, 0, len(read_object(location, key))
    for pack in object_keys(location, "packs"):
        data = read_object(location, pack)
        entries = parse_tail(pack, data, len(data))
        assert not isinstance(entries, int)
        for d, e in entries:
            if d.hex() == digest:
                return pack, e.offset, e.length
    raise AssertionError(f"chunk {digest} is stored nowhere at {location}")


def damage_chunk(location: str, digest: str, at: int = -1) -> str:
    """Flip byte ``at`` of chunk ``digest``'s stored bytes (object or piece); return the key."""
    key, offset, length = chunk_place(location, digest)
    data = bytearray(read_object(location, key))
    data[offset + (at % length)] ^= 0xFF
    overwrite_object(location, key, bytes(data))
    return key
