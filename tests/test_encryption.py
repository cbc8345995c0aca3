"""Encryption at rest: the repository's bytes hold no content, no name and no key.

Real repositories in directories, real loop devices and file systems; passphrases
come from files named by ``BLOCKVAULT_PASSPHRASE_FILE`` (as a script gives them).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from cliutil import blockvault
from imagekit import device_digest
from s3kit import Gateway, bucket_keys, overwrite_object, read_object
from serverkit import RepoServer
from test_agent import agents, raw_volume  # noqa: F401  (agents: the fixture)

pytestmark = pytest.mark.loop

MIB = 1 << 20
MARKER = b"BLOCKVAULT-MARKER-7f3a9c"
NAMES = ("quarterly-salaries.ods", "private-diary")


class Vault:
    """An encrypted repository and the passphrase files of its tests."""

    def __init__(
        self,
        tmp_path: Path,
        cipher: str = "aes-256-gcm",
        server: RepoServer | None = None,
        bucket: str | None = None,
    ) -> None:
        self.path = tmp_path / "vault"
        self.location = bucket or str(self.path)
        self.holds = self.path
        """Where the repository's bytes lie: the directory, or the server's datastore."""
        self.bucket = bucket if server is None else server.location if bucket else None
        """The bucket location the bytes lie in instead (directly, or a server's)."""
        if server is not None:
            self.location, self.holds = server.url, server.store
        self.pw = tmp_path / "pw"
        self.pw.write_text("correct horse battery staple\n")
        self.env = {"BLOCKVAULT_PASSPHRASE_FILE": str(self.pw)}
        if server is not None:
            self.env.update(server.client_env("node1"))
        res = self.bv("repo", "init", "--encryption", cipher)
        assert res.rc == 0, res.out + res.err

    def bv(self, *args: str, env: dict[str, str] | None = None, json: bool = True):
        extra = ["--json"] if json else []
        return blockvault(
            *args, "--repo", self.location, *extra, env={**self.env, **(env or {})},
            timeout=120,
        )

    def with_passphrase(self, text: str) -> dict[str, str]:
        other = self.pw.parent / f"pw-{abs(hash(text))}"
        other.write_text(text + "\n")
        return {"BLOCKVAULT_PASSPHRASE_FILE": str(other)}

    def files(self) -> list[Path]:
        return sorted(p for p in self.holds.rglob("*") if p.is_file())

    def blobs(self) -> list[tuple[str, bytes]]:
        """Every object's bytes, with where it lies: files, or the bucket's objects."""
        if self.bucket is None:
            return [(str(p), p.read_bytes()) for p in self.files()]
        client = Gateway.from_environment().client()
        bucket = self.bucket.removeprefix("s3://").split("/", 1)[0]
        return [(key, bytes(client.get_object(Bucket=bucket, Key=key)["Body"].read()))
                for key in bucket_keys(self.bucket)]


def secret_volume(loopkit):
    vol = loopkit.volume("32M", "ext4")
    assert vol.mount_point is not None
    (vol.mount_point / NAMES[1]).mkdir()
    (vol.mount_point / NAMES[1] / NAMES[0]).write_bytes(MARKER * 2000)
    os.sync()
    return vol


@pytest.mark.parametrize("cipher", ["aes-256-gcm", "chacha20-poly1305"])
def test_no_content_name_or_key_is_in_the_repository_and_it_restores(loopkit, tmp_path, cipher):
    no_content_name_or_key_and_it_restores(loopkit, Vault(tmp_path, cipher))


def test_no_content_name_or_key_is_in_a_servers_datastore_and_it_restores(
    loopkit, tmp_path, repo_server
):
    """Through a real ``blockvault serve``: the datastore (and the server) see only sealed bytes."""
    no_content_name_or_key_and_it_restores(loopkit, Vault(tmp_path, server=repo_server))


@pytest.mark.parametrize("through", ["directly", "a server"])
def test_no_content_name_or_key_is_in_the_bucket_and_it_restores(
    loopkit, tmp_path, s3_location, through
):
    """A bucket on the real RGW, written by the client itself or by a server over it:
    every object there, the server's own records too, is sealed bytes only."""
    if through == "directly":
        no_content_name_or_key_and_it_restores(loopkit, Vault(tmp_path, bucket=s3_location))
        return
    server = RepoServer(tmp_path / "server", s3_location)
    try:
        server.start()
        vault = Vault(tmp_path, server=server, bucket=s3_location)
        no_content_name_or_key_and_it_restores(loopkit, vault)
    finally:
        server.stop()


def no_content_name_or_key_and_it_restores(loopkit, vault: Vault) -> None:
    vol = secret_volume(loopkit)
    image = vault.bv("backup", "image", str(vol.mount_point))
    assert image.rc in (0, 8), image.out + image.err
    (vol.mount_point / "later-notes.txt").write_bytes(MARKER + b" and more")
    inc = vault.bv("backup", "image", str(vol.mount_point), "--mode", "incremental")
    assert inc.rc in (0, 8), inc.out + inc.err
    exported = vault.bv("repo", "key", "export", json=False)
    assert exported.rc == 0, exported.err
    raw_keys = [line.split()[1] for line in exported.out.splitlines()[3:5]]

    blobs = vault.blobs()
    assert any("/packs/" in where for where, _ in blobs)  # small pieces are packed, sealed
    for path, data in blobs:
        for needle in (MARKER, b"later-notes", *map(str.encode, (*NAMES, *raw_keys))):
            assert needle not in data, f"{needle!r} found in {path}"

    dest = loopkit.attach(loopkit.image("32M"))
    res = vault.bv(
        "restore", "image", str(vol.mount_point), dest, "--incremental", "--confirm", dest
    )
    assert res.rc in (0, 8), res.out + res.err
    where = loopkit.mount(dest)
    try:
        assert (where / NAMES[1] / NAMES[0]).read_bytes() == MARKER * 2000
        assert (where / "later-notes.txt").read_bytes() == MARKER + b" and more"
    finally:
        loopkit.umount(where)


def test_a_wrong_or_missing_passphrase_is_one_line_and_writes_nothing(loopkit, tmp_path):
    vault = Vault(tmp_path)
    source = raw_volume(loopkit, 16)
    assert vault.bv("backup", "image", source.device).rc in (0, 8)
    dest = loopkit.attach(loopkit.image("16M"))
    before = device_digest(dest)

    wrong = vault.bv(
        "restore", "image", source.device, dest, "--confirm", dest,
        env=vault.with_passphrase("incorrect horse"), json=False,
    )  # fmt: skip
    missing = vault.bv("query", "image", env={"BLOCKVAULT_PASSPHRASE_FILE": ""}, json=False)

    assert wrong.rc == 12 and missing.rc == 12
    [line] = wrong.err.strip().splitlines()
    assert "opens none of the keys" in line and "nothing was done" in line, line
    [line] = missing.err.strip().splitlines()
    assert "is encrypted" in line and "BLOCKVAULT_PASSPHRASE_FILE" in line, line
    assert device_digest(dest) == before


@pytest.mark.parametrize("where", ["directory", "bucket"])
@pytest.mark.parametrize("kind", ["chunks", "packs", "images", "increments"])
def test_a_flipped_byte_in_any_object_is_found_with_and_without_the_key(
    loopkit, tmp_path, kind, where, request
):
    bucket = request.getfixturevalue("s3_location") if where == "bucket" else None
    vault = Vault(tmp_path, bucket=bucket)
    vol = secret_volume(loopkit)
    assert vault.bv("backup", "image", str(vol.mount_point)).rc in (0, 8)
    (vol.mount_point / "new.bin").write_bytes(os.urandom(600_000))  # a chunk object
    assert vault.bv("backup", "image", str(vol.mount_point), "--mode", "incremental").rc in (0, 8)
    keys = sorted(f"{kind}/{at.rsplit('/', 1)[-1]}" for at, _ in vault.blobs() if f"/{kind}/" in at)
    victim = keys[0]
    data = bytearray(read_object(vault.location, victim))
    data[len(data) // 2] ^= 0x01
    overwrite_object(vault.location, victim, bytes(data))

    keyless = vault.bv("repo", "check", env={"BLOCKVAULT_PASSPHRASE_FILE": ""})
    keyed = vault.bv("repo", "check", "--read-data")

    name = victim.split("/", 1)[1]
    for res in (keyless, keyed):
        assert res.rc == 12, res.out + res.err
        assert any(name in f["message"] for f in res.json()["findings"]), res.out
    assert "CHECKED_WITHOUT_KEY" in keyless.out


def test_a_damaged_chunk_stops_the_restore_before_it_is_written(loopkit, tmp_path):
    vault = Vault(tmp_path)
    source = raw_volume(loopkit, 12)
    assert vault.bv("backup", "image", source.device).rc in (0, 8)
    chunks = sorted(p for p in (vault.path / "chunks").rglob("*") if p.is_file())
    for victim in chunks:  # every chunk flipped: the first one read stops the restore
        data = bytearray(victim.read_bytes())
        data[100] ^= 0x01
        victim.write_bytes(bytes(data))
    dest = loopkit.attach(loopkit.image("12M"))
    before = device_digest(dest)

    res = vault.bv("restore", "image", source.device, dest, "--confirm", dest, json=False)

    assert res.rc == 12, res.out + res.err
    assert "damaged" in res.err and "internal error" not in res.err
    assert device_digest(dest) == before


def test_an_object_moved_to_another_name_does_not_open(loopkit, tmp_path):
    """The name is authenticated: swapping two sealed chunks is found by --read-data."""
    vault = Vault(tmp_path)
    source = raw_volume(loopkit, 12)
    assert vault.bv("backup", "image", source.device).rc in (0, 8)
    a, b = sorted(p for p in (vault.path / "chunks").rglob("*") if p.is_file())[:2]
    da, db = a.read_bytes(), b.read_bytes()
    a.write_bytes(db)
    b.write_bytes(da)

    res = vault.bv("repo", "check", "--read-data")

    assert res.rc == 12
    assert sum("does not open" in f["message"] for f in res.json()["findings"]) == 2


@pytest.mark.parametrize("where", ["directory", "server"])
def test_passwd_rewraps_without_rewriting_data_and_a_removed_copy_no_longer_opens(
    loopkit, tmp_path, request, where
):
    server = request.getfixturevalue("repo_server") if where == "server" else None
    vault = Vault(tmp_path, server=server)
    vol = secret_volume(loopkit)
    assert vault.bv("backup", "image", str(vol.mount_point)).rc in (0, 8)
    objects = {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in vault.files()}
    new = tmp_path / "new-pw"
    new.write_text("a new passphrase\n")

    changed = vault.bv(
        "repo", "key", "passwd", "default",
        env={**vault.env, "BLOCKVAULT_NEW_PASSPHRASE_FILE": str(new)}, json=False,
    )  # fmt: skip
    assert changed.rc == 0, changed.err
    assert vault.bv("query", "image").rc == 12  # the old passphrase no longer opens it
    new_env = {"BLOCKVAULT_PASSPHRASE_FILE": str(new)}
    assert vault.bv("query", "image", env=new_env).rc == 0
    unchanged = {p: v for p, v in objects.items() if p.name != "config.json"}
    assert all((p.stat().st_ino, p.stat().st_mtime_ns) == v for p, v in unchanged.items())

    second = tmp_path / "second-pw"
    second.write_text("the second copy\n")
    added = vault.bv(
        "repo", "key", "add", "spare",
        env={**new_env, "BLOCKVAULT_NEW_PASSPHRASE_FILE": str(second)}, json=False,
    )  # fmt: skip
    assert added.rc == 0, added.err
    second_env = {"BLOCKVAULT_PASSPHRASE_FILE": str(second)}
    assert vault.bv("query", "image", env=second_env).rc == 0
    listed = vault.bv("repo", "key", "list", env=second_env).json()
    assert [s["name"] for s in listed["slots"]] == ["default", "spare"]
    assert "wrapped" not in str(listed) and "salt" not in str(listed)

    removed = vault.bv("repo", "key", "remove", "spare", env=new_env, json=False)
    assert removed.rc == 0, removed.err
    assert vault.bv("query", "image", env=second_env).rc == 12
    last = vault.bv("repo", "key", "remove", "default", env=new_env, json=False)
    assert last.rc == 12 and "only key copy" in last.err


def test_an_exported_key_file_opens_the_repository_without_a_passphrase(loopkit, tmp_path):
    vault = Vault(tmp_path)
    vol = secret_volume(loopkit)
    assert vault.bv("backup", "image", str(vol.mount_point)).rc in (0, 8)
    key_file = tmp_path / "vault.key"
    exported = vault.bv("repo", "key", "export", json=False)
    key_file.write_text(exported.out)

    res = vault.bv("query", "image", env={"BLOCKVAULT_KEY_FILE": str(key_file)})

    assert res.rc == 0, res.err
    (tmp_path / "other").mkdir()
    other = Vault(tmp_path / "other")
    foreign = other.bv("query", "image", env={"BLOCKVAULT_KEY_FILE": str(key_file)}, json=False)
    assert foreign.rc == 12 and "is for repository" in foreign.err


def test_chunk_ids_are_keyed_so_equal_data_has_other_names_in_other_repositories(
    loopkit, tmp_path
):
    source = raw_volume(loopkit, 8)
    plain = tmp_path / "plain"
    assert blockvault("backup", "image", source.device, "--repo", str(plain), "--no-agent").rc == 0
    names = []
    for where in ("one", "two"):
        (tmp_path / where).mkdir()
        vault = Vault(tmp_path / where)
        assert vault.bv("backup", "image", source.device).rc in (0, 8)
        names.append({p.name for p in (vault.path / "chunks").rglob("*") if p.is_file()})
    plain_names = {p.name for p in (plain / "chunks").rglob("*") if p.is_file()}
    assert len(plain_names) == 2 and all(len(n) == 2 for n in names)
    assert not (names[0] & names[1]) and not (names[0] & plain_names)


def test_the_agent_takes_the_passphrase_once_and_keeps_only_the_keys(
    loopkit,
    agents,  # noqa: F811  (the fixture imported above)
):
    """Handed over its socket (as the console does after asking), never stored or logged."""
    from core.errors import BlockvaultError
    from core.jobs import BackupSpec, JobState

    secret = "agent passphrase 9e1c"
    pw = agents.tmp / "pw"
    pw.write_text(secret + "\n")
    repo = agents.tmp / "repo"
    made = blockvault(
        "repo", "init", "--repo", str(repo), "--encryption", "aes-256-gcm",
        env={"BLOCKVAULT_PASSPHRASE_FILE": str(pw)},
    )  # fmt: skip
    assert made.rc == 0, made.err
    source = loopkit.volume("8M", None)
    agent = agents.start()
    client = agents.client(agent)

    locked = client.wait(client.submit(BackupSpec(source.device)), timeout=60)
    assert locked.state is JobState.FAILED and "is encrypted" in (locked.error or "")
    with pytest.raises(BlockvaultError, match="opens none of the keys"):
        client.unlock(b"not the passphrase")
    assert client.unlock(secret.encode())
    done = client.wait(client.submit(BackupSpec(source.device)), timeout=60)

    assert done.state is JobState.DONE, done.error
    kept = b"".join(p.read_bytes() for p in agents.tmp.rglob("*") if p.is_file() and p != pw)
    assert secret.encode() not in kept
