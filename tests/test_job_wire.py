"""The job wire format the agent stores and sends: views survive JSON unchanged."""

from __future__ import annotations

import json
from dataclasses import fields

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core.errors import BlockvaultError
from core.findings import blocker, warning
from core.jobs import (
    BackupSpec,
    JobState,
    JobView,
    RestoreSpec,
    Sample,
    spec_from_dict,
    spec_to_dict,
    view_from_dict,
    view_to_dict,
)
from core.jobs.wire import BadSpec
from core.progress import Progress


def through_json(view: JobView, **kw) -> JobView:
    return view_from_dict(json.loads(json.dumps(view_to_dict(view, **kw))))


def test_a_restore_view_survives_json_with_its_identity_as_tuples():
    """The destination identity compares equal after the trip (tuples, not lists)."""
    identity = ("/dev/loop3", 7, 3, 1 << 26, None, ("/tmp/x.img", 0, 0), "uuid")
    view = JobView(
        "12",
        RestoreSpec("img-1", "/dev/loop3", "/dev/loop3", expected=identity, increment_id="inc"),
        JobState.RUNNING,
        submitted=1.5,
        started=2.5,
        device="/dev/loop3",
        progress=Progress("restoring", 10, 100, 5.0, 18.0, 2.0, {"bytes_written": 10}),
        samples=(Sample(0.5, 1.0, 2.0, 3.0), Sample(1.0, 4.0, 5.0, 6.0)),
        findings=(warning("W", "a warning", x=1), blocker("B", "a blocker")),
        log=("a", "b"),
        log_total=7,
    )
    back = through_json(view)
    assert back == view
    assert back.spec.expected == identity


def test_without_samples_only_the_newest_is_sent():
    """The event stream sends one sample per change, not the whole history."""
    view = JobView(
        "1",
        BackupSpec("/srv", imagetype="static"),
        JobState.DONE,
        submitted=0.0,
        samples=tuple(Sample(i, i, 0, 0) for i in range(50)),
        report={"image_id": "x", "return_code": 0},
        return_code=0,
    )
    doc = view_to_dict(view, samples=False)
    assert doc["samples"] == [[49, 49, 0, 0]] and doc["samples_total"] == 50
    assert through_json(view).samples == view.samples


@pytest.mark.parametrize(
    "doc",
    [{"kind": "format", "target": "/"}, {"kind": "backup", "target": "/", "rm": True}, {}],
)
def test_bad_specs_are_refused_in_one_line(doc):
    """Unknown kinds and fields give a BlockvaultError, not a TypeError."""
    with pytest.raises(BlockvaultError) as e:
        spec_from_dict(doc)
    assert "\n" not in e.value.message and "spec" in e.value.message


@pytest.mark.parametrize(
    "spec, says",
    [
        (RestoreSpec("img1", "/dev/loop9", "/dev/loop9"), "/dev/loop9, which is partly written"),
        (BackupSpec("/srv"), "what a backup stored is reused"),
    ],
)
def test_a_job_cut_off_by_a_dead_agent_comes_back_interrupted_saying_what_it_left(
    tmp_path, spec, says
):
    """The agent's own SQLite store, as a killed agent left it: the job still running."""
    from core.agent.store import SqliteJobStore
    from core.jobs import JobQueue

    store = SqliteJobStore(str(tmp_path / "jobs.db"))
    store.save(JobView("1", spec, JobState.RUNNING, submitted=1.0, started=2.0))
    queue = JobQueue(str(tmp_path / "repo"), store=store)
    try:
        view = queue.view("1")
    finally:
        queue.close()
        store.close()

    assert view.state is JobState.INTERRUPTED and view.return_code == 12
    assert view.error is not None and says in view.error and "\n" not in view.error


# --- the decoder is the agent's door: anything from outside is a spec or a BadSpec -----------

_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
_GOOD = {
    "backup": {"kind": "backup", "target": "/srv"},
    "restore": {"kind": "restore", "image_id": "img-1", "dest": "/dev/loop3", "confirm": "x"},
}
_FIELD_NAMES = {
    "backup": [f.name for f in fields(BackupSpec)],
    "restore": [f.name for f in fields(RestoreSpec)],
}


@settings(max_examples=400, deadline=None)
@given(
    kind=st.sampled_from(["backup", "restore"]),
    data=st.data(),
)
def test_any_json_in_any_field_gives_a_checked_spec_or_a_one_line_bad_spec(kind, data):
    """Never a TypeError or a spec holding a value of the wrong type."""
    name = data.draw(st.sampled_from([*_FIELD_NAMES[kind], "kind", "extra"]))
    value = data.draw(_json)
    doc = {**_GOOD[kind], name: value}
    try:
        spec = spec_from_dict(json.loads(json.dumps(doc)))
    except BadSpec as e:
        assert "\n" not in e.message and e.message.startswith("bad job spec: ")
        assert len(e.message) < 400
        return
    # Accepted: the value is one a spec may hold, and it survives the trip unchanged.
    assert spec_from_dict(json.loads(json.dumps(spec_to_dict(spec)))) == spec
    for f in fields(spec):
        held = getattr(spec, f.name)
        if f.type in ("bool",):
            assert isinstance(held, bool)
        if f.name in ("target", "dest"):
            assert isinstance(held, str) and held.startswith("/")
        if f.name == "snapshot_cache_pct":
            assert type(held) is int and 1 <= held <= 100


@pytest.mark.parametrize(
    "spec",
    [
        BackupSpec("/srv"),
        BackupSpec(
            "/dev/loop3",
            mode="incremental",
            imagetype="snapshot",
            fallback_dynamic=True,
            snapshot_cache_pct=100,
            gap_size=0,
            compare_content=True,
        ),
        BackupSpec("/dev/loop3", imagetype="static", snapshot_cache_pct=1, gap_size=1 << 32),
        RestoreSpec(
            "20260101T000000Z-abcdef",
            "/dev/loop3",
            "loop3",
            expected=None,
            increment_id="20260102T000000.123456Z",
            deletefiles=True,
            preserve_label=True,
            verify=True,
        ),
        RestoreSpec(
            "img-1", "/tmp/out.img", "/tmp/out.img", expected=("/tmp/out.img",), to_file=True
        ),
    ],
)
def test_every_valid_spec_survives_the_decoder(spec):
    assert spec_from_dict(json.loads(json.dumps(spec_to_dict(spec)))) == spec
