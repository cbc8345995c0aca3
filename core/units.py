"""Sizes as people read them, for messages and reports."""

from __future__ import annotations

_UNITS = ("B", "KiB", "MiB", "GiB", "TiB", "PiB")


def human_size(n: int) -> str:
    """Return ``n`` bytes as ``64.0 MiB`` (binary units, one decimal above bytes)."""
    size = float(n)
    for unit in _UNITS:
        if size < 1024 or unit == _UNITS[-1]:
            return f"{int(size)} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


_SIZE_UNITS = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def parse_size(text: str) -> int:
    """Return the bytes of ``32K``, ``4M``, ``1G``, ``2T`` or a plain number of bytes.

    Raises:
        ValueError: not a size, or a negative one (the message says what to write).
    """
    t = text.strip().lower().removesuffix("ib").removesuffix("b")
    unit = _SIZE_UNITS.get(t[-1:], 0)
    try:
        value = int(float(t[:-1]) * unit) if unit else int(t)
    except (ValueError, OverflowError):  # OverflowError: "infk"
        raise ValueError(f"bad size {text!r}: use e.g. 32K, 4M or bytes") from None
    if value < 0:
        raise ValueError(f"bad size {text!r}: a size cannot be negative")
    return value


def article(word: str) -> str:
    """Return ``word`` after "a" or "an", as it is said: "an ext4", "an xfs", "a gpt"."""
    return f"{'an' if word[:1].lower() in 'aeiox' else 'a'} {word}"
