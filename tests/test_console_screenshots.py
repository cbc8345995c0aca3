"""The screenshots keep every space the console drew, in any SVG renderer.

Textual writes each run of one style as its own ``<text>`` element, so the space
between a finding's code and its message (``FS_MOUNTED /dev/sda1``) begins the
next element. SVG's default whitespace handling strips a leading space there, and
renderers such as librsvg (``rsvg-convert``) then draw ``FS_MOUNTED/dev/sda1``.
"""

from __future__ import annotations

import asyncio
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# screenshots/ is a folder of the checkout, not an installed package.
sys.path.insert(0, str(ROOT))

from screenshots.generate import HERE, shoot  # noqa: E402
from screenshots.scene import walk_to_history  # noqa: E402
from tui.themes import DEFAULT_THEME  # noqa: E402

SPACE = "{http://www.w3.org/XML/1998/namespace}space"


def leading_space_texts(svg: Path) -> list[str]:
    """Return the text of every ``<text>`` element of ``svg`` that begins with a space."""
    root = ET.parse(svg).getroot()
    return [
        t.text
        for t in root.iter("{http://www.w3.org/2000/svg}text")
        if t.text and t.text[0] in " \u00a0"
    ]


def preserves_spaces(svg: Path) -> bool:
    """True when ``svg`` tells renderers to keep its spaces (``xml:space="preserve"``)."""
    return ET.parse(svg).getroot().get(SPACE) == "preserve"


def test_a_screenshot_keeps_the_space_after_a_styled_word(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The history view (bold codes, a space, the message) as the generator saves it."""
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.delenv("SSH_CONNECTION", raising=False)
    monkeypatch.delenv("SSH_TTY", raising=False)
    svg = asyncio.run(shoot("history.svg", (160, 50), DEFAULT_THEME, walk_to_history, tmp_path))
    assert any(t.lstrip("\u00a0 ").startswith("/dev/sda1") for t in leading_space_texts(svg))
    assert preserves_spaces(svg)


def test_every_committed_screenshot_keeps_its_spaces() -> None:
    """The SVGs in screenshots/ were written by the generator that keeps spaces."""
    svgs = sorted(HERE.glob("*.svg"))
    assert svgs
    assert [s.name for s in svgs if not preserves_spaces(s)] == []
