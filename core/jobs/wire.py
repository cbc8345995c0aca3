"""The wire format of jobs: specs and views as JSON-ready data (the agent's API and its store)."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import MISSING, asdict, fields
from typing import Any

from core.errors import BlockvaultError
from core.findings import finding_from_dict
from core.jobs.model import (
    BACKUP_MODES,
    IMAGE_TYPES,
    BackupSpec,
    JobSpec,
    JobState,
    JobView,
    RestoreSpec,
    Sample,
)
from core.progress import Progress


def spec_to_dict(spec: JobSpec) -> dict[str, Any]:
    """Return ``spec`` as JSON-ready data with its ``kind``."""
    kind = "backup" if isinstance(spec, BackupSpec) else "restore"
    return {"kind": kind, **asdict(spec)}


class BadSpec(BlockvaultError):
    """A job spec from outside (the agent's socket, its store) that is not a valid spec."""


PATH_MAX = 4096
"""Longest path a spec may name (Linux's PATH_MAX)."""
MAX_GAP_SIZE = 1 << 32
"""The largest ``gap_size`` a spec may ask for (4 GiB): a bound, so an absurd one is refused."""
MAX_IDENTITY = 16
"""Most values a destination's identity holds (``RestorePlan.identity`` has seven)."""
_INT_LIMIT = 1 << 63
_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
"""An image or increment id as the repository files it: a name, never a path."""

Check = Callable[[Any], str | None]
"""Says what a field's value must be when it is not (None when it is fine)."""


def _shown(value: Any) -> str:
    """Return ``value`` as a short one-line repr for an error message (it is hostile)."""
    text = json.dumps(value) if isinstance(value, (bool, type(None))) else repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _flag(value: Any) -> str | None:
    return None if isinstance(value, bool) else "true or false"


def _whole(lo: int, hi: int) -> Check:
    def check(value: Any) -> str | None:
        if isinstance(value, int) and not isinstance(value, bool) and lo <= value <= hi:
            return None
        return f"a whole number from {lo} to {hi}"

    return check


def _one_of(*allowed: str) -> Check:
    def check(value: Any) -> str | None:
        return (
            None if isinstance(value, str) and value in allowed else "one of " + ", ".join(allowed)
        )

    return check


def _text(value: Any) -> str | None:
    if isinstance(value, str) and 0 < len(value) <= PATH_MAX and "\0" not in value:
        return None
    return f"a non-empty string of at most {PATH_MAX} characters without NUL"


def _absolute_path(value: Any) -> str | None:
    # The agent runs in / : a path relative to the sender's directory would name another file.
    if _text(value) is None and value.startswith("/"):
        return None
    return f"an absolute path of at most {PATH_MAX} characters without NUL"


def _object_id(value: Any) -> str | None:
    if isinstance(value, str) and _ID.fullmatch(value):
        return None
    return "an id of letters, digits, '.', '_' and '-' (at most 128, not starting with a symbol)"


def _scalar(value: Any) -> bool:
    if value is None or isinstance(value, bool):
        return True
    if isinstance(value, int):
        return -_INT_LIMIT <= value < _INT_LIMIT
    return isinstance(value, str) and _text(value) is None


def _identity(value: Any) -> str | None:
    def listed(v: Any) -> bool:
        return isinstance(v, (list, tuple)) and len(v) <= MAX_IDENTITY

    if listed(value) and all(_scalar(v) or (listed(v) and all(map(_scalar, v))) for v in value):
        return None
    return (
        f"a list of at most {MAX_IDENTITY} strings, whole numbers, booleans, nulls or lists of them"
    )


def _optional(check: Check) -> Check:
    def optional(value: Any) -> str | None:
        said = check(value)
        return None if value is None or said is None else f"null or {said}"

    return optional


_FIELDS: dict[str, tuple[type[BackupSpec] | type[RestoreSpec], dict[str, Check]]] = {
    "backup": (
        BackupSpec,
        {
            "target": _absolute_path,
            "mode": _one_of(*BACKUP_MODES),
            "imagetype": _optional(_one_of(*IMAGE_TYPES)),
            "fallback_dynamic": _flag,
            "snapshot_cache_pct": _whole(1, 100),
            "gap_size": _optional(_whole(0, MAX_GAP_SIZE)),
            "compare_content": _flag,
        },
    ),
    "restore": (
        RestoreSpec,
        {
            "image_id": _object_id,
            "dest": _absolute_path,
            "confirm": _text,
            "expected": _optional(_identity),
            "increment_id": _optional(_object_id),
            "deletefiles": _flag,
            "preserve_label": _flag,
            "verify": _flag,
            "to_file": _flag,
        },
    ),
}
"""Every field of every spec and what its value must be: a field not named here is refused."""


def _tuples(value: Any) -> Any:
    """Return JSON lists as tuples, recursively (identities compare as tuples)."""
    return tuple(_tuples(v) for v in value) if isinstance(value, list) else value


def spec_from_dict(d: Any) -> JobSpec:
    """Return the spec ``spec_to_dict`` wrote, every field checked; BadSpec on anything else.

    Everything arrives from outside (a socket, a database): the kind, the field names
    and each value's type and range are checked before a spec is made, and the one-line
    error names the field that is wrong.
    """
    if not isinstance(d, Mapping):
        raise BadSpec(f"bad job spec: send a JSON object with 'kind', not {_shown(d)}")
    kind = d.get("kind")
    if not isinstance(kind, str) or kind not in _FIELDS:
        raise BadSpec(f"bad job spec: 'kind' must be 'backup' or 'restore', not {_shown(kind)}")
    cls, checks = _FIELDS[kind]
    unknown = sorted(str(k) for k in d if k != "kind" and k not in checks)
    if unknown:
        raise BadSpec(
            f"bad job spec: a {kind} has no field {_shown(unknown[0])}; "
            f"its fields are {', '.join(checks)}"
        )
    required = [f.name for f in fields(cls) if f.default is MISSING]
    missing = [name for name in required if name not in d]
    if missing:
        raise BadSpec(f"bad job spec: a {kind} needs {_shown(missing[0])}")
    for name, check in checks.items():
        if name in d and (should := check(d[name])) is not None:
            raise BadSpec(f"bad job spec: {name!r} must be {should}, not {_shown(d[name])}")
    values = {name: _tuples(d[name]) for name in checks if name in d}
    return cls(**values)


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
