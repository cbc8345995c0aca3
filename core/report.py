"""What every job's report shares: findings, a duration and a TSM return code."""

from __future__ import annotations

from typing import Any

from core import findings as F
from core.findings import Finding, ReturnCode


class JobReport:
    """What every job report shares: its findings, duration and TSM return code.

    Mixed into the backup and restore report dataclasses (which declare the fields).
    """

    findings: list[Finding]
    duration: float

    @property
    def return_code(self) -> ReturnCode:
        """0, or 8 when the job finished with warnings."""
        return F.return_code(self.findings)

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON report: every field, findings as dicts, the return code."""
        d = {k: v for k, v in self.__dict__.items() if k != "findings"}
        d["findings"] = [f.to_dict() for f in self.findings]
        d["duration"] = round(self.duration, 3)
        d["return_code"] = int(self.return_code)
        return d
