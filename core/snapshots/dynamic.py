"""The dynamic view: the volume read as it is, while in use, and the image marked fuzzy."""

from __future__ import annotations

from core import findings as F
from core.devices import BlockDevice
from core.findings import Finding
from core.snapshots.model import ImageType, Provider, ReadView


def dynamic_view(dev: BlockDevice, findings: tuple[Finding, ...] = ()) -> ReadView:
    """Return the view of ``dev`` as it is, with ``findings`` and IMAGE_FUZZY after them."""
    fuzzy = F.warning(
        "IMAGE_FUZZY",
        f"{dev.path} was copied while in use without a snapshot: the image may be "
        "inconsistent; run fsck after restoring",
        device=dev.path,
    )
    return ReadView(
        path=dev.path,
        offset=0,
        size=dev.size,
        imagetype=ImageType.DYNAMIC,
        fuzzy=True,
        provider=Provider.NONE,
        findings=(*findings, fuzzy),
    )
