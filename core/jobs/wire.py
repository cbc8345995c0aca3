"""The wire format of jobs: specs and views as JSON-ready data (the agent's API and its store)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict
from typing import Any

from core.errors import BlockvaultError
from core.findings import finding_from_dict
from core.jobs.model import BackupSpec, JobSpec, JobState, JobView, RestoreSpec, Sample
from core.progress import Progress


def spec_to_dict(spec: JobSpec) -> dict[str, Any]:
    """Return ``spec`` as JSON-ready data with its ``kind``."""
    kind = "backup" if isinstance(spec, BackupSpec) else "restore"
    return {"kind": kind, **asdict(spec)}


def _tuples(value: Any) -> Any:
    """Return JSON lists as tuples, recursively (identities compare as tuples)."""
    return tuple(_tuples(v) for v in value) if isinstance(value, list) else value


def spec_from_dict(d: Mapping[str, Any]) -> JobSpec:
    """Return the spec ``spec_to_dict`` wrote; BlockvaultError on anything else."""
    fields = {k: v for k, v in d.items() if k != "kind"}
    try:
        if d.get("kind") == "backup":
            return BackupSpec(**fields)
        if d.get("kind") == "restore":
            expected = fields.get("expected")
            fields["expected"] = _tuples(expected) if expected is not None else None
            return RestoreSpec(**fields)
    except TypeError as e:
        raise BlockvaultError(f"bad job spec: {e}; send a backup's or a restore's fields") from None
    raise BlockvaultError("bad job spec: 'kind' must be 'backup' or 'restore'")


def _progress_to_dict(p: Progress) -> dict[str, Any]:
    return {**asdict(p), "counters": dict(p.counters)}


def view_to_dict(view: JobView, *, samples: bool = True) -> dict[str, Any]:
    """Return ``view`` as JSON-ready data; without ``samples`` only the newest one is kept."""
    kept = view.samples if samples else view.samples[-1:]
    return {
        "id": view.id,
        "spec": spec_to_dict(view.spec),
        "state": view.state.value,
        "submitted": view.submitted,
        "started": view.started,
        "ended": view.ended,
        "device": view.device,
        "progress": _progress_to_dict(view.progress) if view.progress else None,
        "samples": [[s.t, s.rate, s.dev_read, s.dev_write] for s in kept],
        "samples_total": len(view.samples),
        "report": view.report,
        "return_code": view.return_code,
        "error": view.error,
        "findings": [f.to_dict() for f in view.findings],
        "log": list(view.log),
        "log_total": view.log_total,
    }


def view_from_dict(d: Mapping[str, Any]) -> JobView:
    """Return the view ``view_to_dict`` wrote."""
    p = d.get("progress")
    return JobView(
        id=str(d["id"]),
        spec=spec_from_dict(d["spec"]),
        state=JobState(d["state"]),
        submitted=float(d["submitted"]),
        started=d.get("started"),
        ended=d.get("ended"),
        device=d.get("device"),
        progress=Progress(**{**p, "counters": dict(p.get("counters") or {})}) if p else None,
        samples=tuple(Sample(*row) for row in d.get("samples") or ()),
        report=d.get("report"),
        return_code=d.get("return_code"),
        error=d.get("error"),
        findings=tuple(finding_from_dict(f) for f in d.get("findings") or ()),
        log=tuple(d.get("log") or ()),
        log_total=int(d.get("log_total") or 0),
    )


