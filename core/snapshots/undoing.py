"""Running the undo of a held change: its undo record is forgotten only once it worked.

A failed undo keeps its record, so :func:`core.snapshots.recover_interrupted` in the
next backup or agent tries it again.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from core import undo


def undone(rec: undo.UndoRecord, undo_fn: Callable[..., None], *args: Any) -> None:
    """Run ``undo_fn(*args)``; forget ``rec`` only once it succeeded."""
    undo_fn(*args)
    undo.forget(rec)
