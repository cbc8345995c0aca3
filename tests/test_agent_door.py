"""The agent's door: hostile requests on its real socket get a one-line 4xx, never a 500.

Every request here is written byte by byte on the agent's Unix socket (no HTTP
client tidies it up first): job specs with a wrong type or value in each field, bad
``Content-Length`` headers, truncated and stalled bodies, bad JSON, bad methods,
paths and headers. Each answer is a JSON ``{"error", "return_code": 12}`` in one line;
nothing is queued; the agent stays up and its memory does not grow.
"""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, fields
from pathlib import Path

import psutil
import pytest

from core.agent.client import AgentClient, start_agent
from core.agent.server import MAX_BODY
from core.jobs import BackupSpec, RestoreSpec

MIB = 1 << 20
AGENT = [sys.executable, "-m", "core.agent.server"]


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def doc(self) -> dict:
        return json.loads(self.body)


@dataclass
class Door:
    """One agent process for the whole module: every hostile request goes to the same one."""

    socket: Path
    proc: subprocess.Popen[bytes]

    def ask(self, raw: bytes, *, shut: bool = True, timeout: float = 10.0) -> Answer:
        """Write ``raw`` on a new connection (then end the sending side); read one answer."""
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(timeout)
        s.connect(str(self.socket))
        try:
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                s.sendall(raw)
                if shut:
                    s.shutdown(socket.SHUT_WR)
            return read_answer(s)
        finally:
            s.close()

    def post_spec(self, doc: object) -> Answer:
        body = json.dumps(doc).encode()
        return self.ask(request("POST", "/v1/jobs", body))

    def jobs(self) -> list[dict]:
        with AgentClient(str(self.socket)) as client:
            return [{"id": v.id, "spec": v.spec} for v in client.views()]

    def alive(self) -> bool:
        if self.proc.poll() is not None:
            return False
        with AgentClient(str(self.socket)) as client:
            return client.health()["pid"] == self.proc.pid


def request(method: str, path: str, body: bytes = b"", **headers: str) -> bytes:
    """Return a raw HTTP/1.1 request; ``Content-Length`` is the body's unless given."""
    head = {"Host": "agent", "Connection": "close", **headers}
    if body and "Content_Length" not in headers:
        head["Content-Length"] = str(len(body))
    lines = [f"{method} {path} HTTP/1.1"] + [f"{k.replace('_', '-')}: {v}" for k, v in head.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def read_answer(s: socket.socket) -> Answer:
    """Read one HTTP response: the head, then its Content-Length of body (or up to EOF)."""
    data = b""
    while b"\r\n\r\n" not in data:
        try:
            got = s.recv(65536)
        except ConnectionResetError:
            got = b""
        if not got:
            raise AssertionError(f"the agent closed the connection without an answer: {data!r}")
        data += got
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in header_lines:
        k, _, v = line.partition(":")
        headers[k.strip().lower()] = v.strip()
    want = int(headers.get("content-length", "-1"))
    while want < 0 or len(body) < want:
        try:
            got = s.recv(65536)
        except ConnectionResetError:
            got = b""
        if not got:
            break
        body += got
    return Answer(int(status_line.split()[1]), headers, body[: want if want >= 0 else None])


def assert_refused(answer: Answer, status: int, *words: str) -> None:
    """A one-line JSON error with return code 12, saying ``words``."""
    assert answer.status == status, (answer.status, answer.body[:300])
    assert answer.headers.get("content-type") == "application/json", answer.headers
    doc = answer.doc
    assert doc["return_code"] == 12 and isinstance(doc["error"], str), doc
    assert doc["error"] and "\n" not in doc["error"] and len(doc["error"]) < 400, doc
    for word in words:
        assert word in doc["error"], (word, doc["error"])


@pytest.fixture(scope="module")
def door(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Door]:
    tmp = tmp_path_factory.mktemp("door")
    proc = start_agent(
        str(tmp / "run" / "agent.sock"),
        repo_location=str(tmp / "repo"),
        db_path=str(tmp / "db" / "jobs.db"),
        timeout=15,
        command=AGENT,
    )
    assert proc is not None
    try:
        yield Door(tmp / "run" / "agent.sock", proc)
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(30)


@pytest.fixture
def unchanged(door: Door) -> Iterator[None]:
    """The test queues nothing, and the agent is the same live process after it."""
    before = door.jobs()
    yield
    assert door.alive(), "the agent died"
    assert door.jobs() == before, "a hostile request was queued"


# --- job specs: every field, many wrong values -----------------------------------------------

BACKUP = {
    "kind": "backup",
    "target": "/nonexistent/bv-door",
    "mode": "full",
    "imagetype": "dynamic",
    "fallback_dynamic": False,
    "snapshot_cache_pct": 10,
    "gap_size": 32768,
    "compare_content": False,
}
RESTORE = {
    "kind": "restore",
    "image_id": "20260101T000000Z-abcdef",
    "dest": "/nonexistent/bv-door-dest",
    "confirm": "/nonexistent/bv-door-dest",
    "expected": ["/dev/loop3", 7, 3, 1 << 26, None, ["/tmp/x.img", 0, 0], "uuid"],
    "increment_id": None,
    "deletefiles": False,
    "preserve_label": False,
    "verify": False,
    "to_file": False,
}
NOT_TEXT = [1, 1.5, True, None, [], {}, ["/x"]]
NOT_FLAG = [0, 1, "true", "false", None, [], {}, 1.0]
NOT_WHOLE = ["10", 10.5, True, False, None, [], {}, 1e3]
NOT_PATH = [*NOT_TEXT, "", "relative/path", ".", "/a\0b", "/" + "x" * 5000]
NOT_ID = [*NOT_TEXT, "", "../etc", "a/b", "-x", ".hidden", "x" * 200, "id with space"]
WRONG = {
    ("backup", "target"): NOT_PATH,
    ("backup", "mode"): [*NOT_TEXT, "", "FULL", "differential", "incremental "],
    ("backup", "imagetype"): [1, True, [], {}, "", "raw", "STATIC", "snapshot\n", "format"],
    ("backup", "fallback_dynamic"): NOT_FLAG,
    ("backup", "snapshot_cache_pct"): [*NOT_WHOLE, 0, 101, -5, 10**30],
    ("backup", "gap_size"): [*NOT_WHOLE[:4], -1, -4096, (1 << 32) + 1, 10**30, "32K"],
    ("backup", "compare_content"): NOT_FLAG,
    ("restore", "image_id"): NOT_ID,
    ("restore", "dest"): NOT_PATH,
    ("restore", "confirm"): [*NOT_TEXT, "", "a\0b", "x" * 5000],
    ("restore", "expected"): [
        "/dev/loop3",
        1,
        True,
        {},
        [1.5],
        [{"a": 1}],
        [[["deep"]]],
        ["x"] * 17,
        [["x"] * 17],
        [1 << 64],
        ["x" * 5000],
    ],
    ("restore", "increment_id"): [1, True, [], {}, "", "../x", "a/b"],
    ("restore", "deletefiles"): NOT_FLAG,
    ("restore", "preserve_label"): NOT_FLAG,
    ("restore", "verify"): NOT_FLAG,
    ("restore", "to_file"): NOT_FLAG,
}
CASES = [
    pytest.param(kind, name, value, id=f"{kind}.{name}={json.dumps(value)[:30]}")
    for (kind, name), values in WRONG.items()
    for value in values
]


def test_the_table_names_every_field_of_every_spec():
    """A new field must get its wrong values here (and its check in the wire format)."""
    for kind, cls, base in (("backup", BackupSpec, BACKUP), ("restore", RestoreSpec, RESTORE)):
        names = {f.name for f in fields(cls)}
        assert {n for k, n in WRONG if k == kind} == names
        assert set(base) - {"kind"} == names


def test_the_image_types_a_spec_may_name_are_the_snapshot_layers():
    from core.jobs.model import IMAGE_TYPES
    from core.snapshots import ImageType

    assert set(IMAGE_TYPES) == {t.value for t in ImageType}


@pytest.mark.parametrize("kind, name, value", CASES)
def test_a_spec_with_a_wrong_value_is_refused_at_the_door_naming_the_field(
    door, unchanged, kind, name, value
):
    doc = {**(BACKUP if kind == "backup" else RESTORE), name: value}
    assert_refused(door.post_spec(doc), 400, "bad job spec", repr(name))


@pytest.mark.parametrize(
    "doc, words",
    [
        ({**BACKUP, "rm": "-rf"}, ["'rm'"]),
        ({**RESTORE, "force": True}, ["'force'"]),
        ({**BACKUP, "confirm": "/dev/sda"}, ["'confirm'"]),  # a restore's field on a backup
        ({k: v for k, v in BACKUP.items() if k != "target"}, ["'target'"]),
        ({k: v for k, v in RESTORE.items() if k != "confirm"}, ["'confirm'"]),
        ({**BACKUP, "kind": "format"}, ["'kind'"]),
        ({**BACKUP, "kind": ["backup"]}, ["'kind'"]),
        ({k: v for k, v in BACKUP.items() if k != "kind"}, ["'kind'"]),
        ([BACKUP], ["JSON object"]),
        ("backup", ["JSON object"]),
        (None, ["JSON object"]),
    ],
)
def test_unknown_missing_and_misplaced_fields_are_refused_naming_them(door, unchanged, doc, words):
    assert_refused(door.post_spec(doc), 400, "bad job spec", *words)


def test_a_good_spec_still_gets_in(door):
    """The control: the table refuses the wrong values, not everything."""
    answer = door.post_spec(RESTORE)
    assert answer.status == 201, answer.body
    job_id = answer.doc["id"]
    with AgentClient(str(door.socket)) as client:
        view = client.wait(job_id, timeout=60)
    identity = ("/dev/loop3", 7, 3, 1 << 26, None, ("/tmp/x.img", 0, 0), "uuid")
    fields_sent = {k: v for k, v in RESTORE.items() if k not in ("kind", "expected")}
    assert view.spec == RestoreSpec(**fields_sent, expected=identity)


# --- Content-Length and the body ---------------------------------------------------------------

SPEC = json.dumps(BACKUP).encode()


@pytest.mark.parametrize(
    "length, status",
    [
        ("-1", 400),
        ("-5000000", 400),
        ("-0", 400),
        ("abc", 400),
        ("12abc", 400),
        ("1_0", 400),  # int() would take it as 10
        ("+10", 400),
        ("0x10", 400),
        ("1e3", 400),
        ("١٠", 400),  # Arabic-Indic digits: int() would take it as 10
        ("10, 10", 400),
        (str(MAX_BODY + 1), 413),
        ("99999999999999999999999999", 413),
    ],
)
def test_a_bad_content_length_is_refused_before_the_body_is_read(door, unchanged, length, status):
    """A valid spec follows each bad length: read up to EOF, it would be queued."""
    answer = door.ask(request("POST", "/v1/jobs", SPEC, Content_Length=length))
    assert_refused(answer, status, "Content-Length")


def test_a_spec_without_a_content_length_is_refused_411(door, unchanged):
    assert_refused(door.ask(request("POST", "/v1/jobs", SPEC, Content_Length="")), 411)
    raw = b"POST /v1/jobs HTTP/1.1\r\nHost: agent\r\n\r\n" + SPEC
    assert_refused(door.ask(raw), 411, "Content-Length")
    chunked = request("POST", "/v1/jobs", b"", Transfer_Encoding="chunked")
    assert_refused(door.ask(chunked + b"%x\r\n%s\r\n0\r\n\r\n" % (len(SPEC), SPEC)), 411)


def test_two_content_lengths_that_disagree_are_refused(door, unchanged):
    raw = request("POST", "/v1/jobs", SPEC).replace(
        b"\r\n\r\n", f"\r\nContent-Length: {len(SPEC) + 5}\r\n\r\n".encode(), 1
    )
    assert_refused(door.ask(raw), 400, "Content-Length")


@pytest.mark.parametrize("sent", [0, 1, len(SPEC) // 2, len(SPEC) - 1])
def test_a_truncated_body_is_refused_saying_how_much_came(door, unchanged, sent):
    raw = request("POST", "/v1/jobs", SPEC[:sent], Content_Length=str(len(SPEC)))
    assert_refused(door.ask(raw), 400, f"{sent} of {len(SPEC)} bytes")


def test_a_stalled_body_times_out_with_408_and_holds_no_connection(door, unchanged):
    """Several clients that send half a body and wait: each is answered within seconds."""
    raw = request("POST", "/v1/jobs", SPEC[:10], Content_Length=str(len(SPEC)))
    answers: list[Answer] = []
    started = time.monotonic()
    askers = [
        threading.Thread(target=lambda: answers.append(door.ask(raw, shut=False, timeout=30)))
        for _ in range(4)
    ]
    for t in askers:
        t.start()
    for t in askers:
        t.join(60)
    assert len(answers) == 4
    assert time.monotonic() - started < 20
    for answer in answers:
        assert_refused(answer, 408, "request body")


# --- other malformed requests --------------------------------------------------------------------


def deep(n: int) -> bytes:
    return b"[" * n + b"]" * n


@pytest.mark.parametrize(
    "body, words",
    [
        (b"{not json", ["not JSON"]),
        (b"\xff\xfe\x00garbage", ["not JSON"]),
        (deep(30_000), ["not JSON"]),  # deeper than the parser's recursion limit
        (b'{"kind": ' + b"1" * 20_000 + b"}", ["not JSON"]),  # more digits than int() takes
        (b'{"kind": "backup", "target": NaN}', ["'target'"]),
        (b'{"kind": "backup", "target": "/x", "snapshot_cache_pct": Infinity}', ["snapshot"]),
        (b"[" + b"1," * 30_000 + b"1]", ["JSON object"]),
    ],
    ids=[
        "not-json",
        "not-utf8",
        "nested-30000-deep",
        "20000-digits",
        "nan",
        "infinity",
        "a-long-list",
    ],
)
def test_bad_json_is_refused_in_one_line(door, unchanged, body, words):
    assert_refused(door.ask(request("POST", "/v1/jobs", body)), 400, *words)


@pytest.mark.parametrize(
    "raw, status",
    [
        (request("PATCH", "/v1/jobs", SPEC), 405),
        (request("OPTIONS", "/v1/health"), 405),
        (request("BREW", "/v1/health"), 405),
        (request("DELETE", "/v1/jobs"), 405),
        (request("PUT", "/v1/jobs", SPEC), 405),
        (request("GET", "/v2/jobs"), 404),
        (request("POST", "/v1/nothing", SPEC), 404),
        (request("GET", "/v1/jobs/1/../../etc"), 404),
        (request("GET", "*"), 404),
        (request("GET", "/v1/health", X_Big="x" * 70_000), 431),
        (
            b"GET /v1/health HTTP/1.1\r\n"
            + b"".join(b"X-%d: y\r\n" % i for i in range(150))
            + b"\r\n",
            431,
        ),
        (b"GET /" + b"x" * 70_000 + b" HTTP/1.1\r\n\r\n", 414),
        (b"complete garbage\r\n\r\n", 400),
        (b"GET /v1/health HTTP/2.0\r\n\r\n", 400),
        (b"GET /v1/health HTTP/1.x\r\n\r\n", 400),
        (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 64 + b"\r\n\r\n", 400),
    ],
    ids=lambda v: repr(v.split(b"\r\n")[0][:30])[2:-1] if isinstance(v, bytes) else str(v),
)
def test_other_malformed_requests_get_a_4xx_in_json(door, unchanged, raw, status):
    assert_refused(door.ask(raw), status)


# --- memory ------------------------------------------------------------------------------------


def peak_rss(pid: int) -> int:
    """The process's peak resident memory so far (VmHWM), in bytes."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


def send_big_body(door: Door, head: bytes, size: int) -> Answer:
    """Send ``head`` and then ``size`` bytes of body as fast as the agent takes them."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(30)
    s.connect(str(door.socket))
    block = b"x" * MIB
    try:
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            s.sendall(head)
            for _ in range(size // MIB):
                s.sendall(block)
            s.shutdown(socket.SHUT_WR)
        return read_answer(s)
    finally:
        s.close()


@pytest.mark.parametrize(
    "length, status",
    [("-1", 400), ("-200000000", 400), (str(1 << 40), 413), ("1_0", 400)],
)
def test_a_big_body_behind_a_bad_length_does_not_grow_the_agent(door, unchanged, length, status):
    """200 MiB after a bad Content-Length: the agent answers and closes, reading none of it."""
    agent = psutil.Process(door.proc.pid)
    rss, peak = agent.memory_info().rss, peak_rss(agent.pid)
    head = request("POST", "/v1/jobs", b"", Content_Length=length)
    answer = send_big_body(door, head, 200 * MIB)
    assert_refused(answer, status, "Content-Length")
    assert peak_rss(agent.pid) - peak < 16 * MIB
    assert agent.memory_info().rss - rss < 16 * MIB


def test_many_largest_bodies_keep_the_agent_small(door, unchanged):
    """Bodies at the limit, one after another: each is read whole, refused, and let go."""
    agent = psutil.Process(door.proc.pid)
    body = b"[" + b"0," * (MAX_BODY // 2 - 2) + b"0]"
    assert len(body) == MAX_BODY - 1
    for _ in range(3):  # warm up: the first requests allocate the agent's buffers for good
        door.ask(request("POST", "/v1/jobs", body))
    rss, peak = agent.memory_info().rss, peak_rss(agent.pid)
    for _ in range(50):
        assert_refused(door.ask(request("POST", "/v1/jobs", body)), 400, "JSON object")
    assert peak_rss(agent.pid) - peak < 16 * MIB
    assert agent.memory_info().rss - rss < 16 * MIB
