"""Disk labels (MBR, GPT, Sun VTOC, BSD) and the cylinder-0 checks built on them.

The parsers read untrusted bytes: any input gives a :class:`DiskLabel` or None,
never an exception, and every count taken from a label is bounded before it is
used. :func:`extent_findings` says whether restoring a volume would overwrite its
disk's label; :func:`volume_label_findings` whether a volume's image carries one.
"""

from core.labels.detect import read_label
from core.labels.extent import (
    LABEL_CYLINDER0,
    LABEL_GPT_BACKUP,
    LABEL_PARTITION,
    LABEL_SECTOR0,
    VOLUME_HOLDS_LABEL,
    extent_findings,
    partition_name,
    volume_label_findings,
)
from core.labels.model import ByteRange, DiskLabel, LabelKind, LabelPartition

__all__ = [
    "LABEL_CYLINDER0",
    "LABEL_GPT_BACKUP",
    "LABEL_PARTITION",
    "LABEL_SECTOR0",
    "VOLUME_HOLDS_LABEL",
    "ByteRange",
    "DiskLabel",
    "LabelKind",
    "LabelPartition",
    "extent_findings",
    "partition_name",
    "read_label",
    "volume_label_findings",
]
