"""Findings: the results of every guard and check, as data.

The console and the command line render the same findings; a blocker cannot be
confirmed away. Return codes follow TSM: 0 success, 4 some objects skipped,
8 finished with warnings, 12 failed or refused.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any


class Severity(IntEnum):
    """How much a finding matters; ordered so that ``max()`` gives the worst."""

    INFO = 0
    WARNING = 1
    BLOCKER = 2

    @property
    def word(self) -> str:
        """The lower-case name used in JSON and on screen."""
        return self.name.lower()


class ReturnCode(IntEnum):
    """TSM-style process return codes."""

    OK = 0
    SKIPPED = 4
    WARNINGS = 8
    FAILED = 12


@dataclass(frozen=True)
class Finding:
    """One result of a check: a stable code, a severity and what to do about it."""

    code: str
    """Stable, upper-case identifier scripts can match on (``MOUNT_NESTED``)."""
    severity: Severity
    message: str
    """One line for a person: what is wrong and what to do."""
    details: Mapping[str, Any] = field(default_factory=dict)
    """Machine-readable facts behind the message (pids, paths, offsets)."""
    confirmed: bool = False
    """A warning the user was shown and confirmed before the job wrote anything (a
    restore's DEST_HAS_DATA): it stays in the report, but a job that went as confirmed
    is a clean one, so it does not make the return code 8."""

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON form used by ``--json`` output."""
        d: dict[str, Any] = {
            "code": self.code,
            "severity": self.severity.word,
            "message": self.message,
            "details": dict(self.details),
        }
        if self.confirmed:
            d["confirmed"] = True
        return d


def finding_from_dict(d: Mapping[str, Any]) -> Finding:
    """Return the finding ``Finding.to_dict`` wrote (the agent's wire format)."""
    return Finding(
        code=str(d["code"]),
        severity=Severity[str(d["severity"]).upper()],
        message=str(d["message"]),
        details=dict(d.get("details") or {}),
        confirmed=d.get("confirmed") is True,
    )


def info(code: str, message: str, **details: Any) -> Finding:
    """Return an informational finding."""
    return Finding(code, Severity.INFO, message, details)


def warning(code: str, message: str, **details: Any) -> Finding:
    """Return a warning finding."""
    return Finding(code, Severity.WARNING, message, details)


def blocker(code: str, message: str, **details: Any) -> Finding:
    """Return a blocker finding: the operation must not go ahead."""
    return Finding(code, Severity.BLOCKER, message, details)


def worst(findings: Iterable[Finding]) -> Severity | None:
    """Return the highest severity among ``findings``, or None when there are none."""
    return max((f.severity for f in findings), default=None)


def return_code(findings: Iterable[Finding]) -> ReturnCode:
    """Map findings to the TSM return code of a check: 0, 8 for warnings, 12 for a blocker.

    Warnings the user confirmed before the job (:attr:`Finding.confirmed`) do not count.
    """
    top = worst(f for f in findings if not (f.confirmed and f.severity is Severity.WARNING))
    if top is Severity.BLOCKER:
        return ReturnCode.FAILED
    if top is Severity.WARNING:
        return ReturnCode.WARNINGS
    return ReturnCode.OK
