"""Radio buttons and check boxes whose state shows without colour: a mark when on, none off.

Textual draws the same glyph in both states and tells them apart by colour only,
which a 16-colour terminal or a colour-blind reader may not.
"""

from __future__ import annotations

from textual.content import Content
from textual.widgets import Checkbox, RadioButton


class MarkedRadioButton(RadioButton):
    """A radio button showing ``●`` when chosen and a blank when not."""

    def render(self) -> Content:
        self.BUTTON_INNER = "●" if self.value else " "
        return super().render()


class MarkedCheckbox(Checkbox):
    """A check box showing ``X`` when ticked and a blank when not."""

    def render(self) -> Content:
        self.BUTTON_INNER = "X" if self.value else " "
        return super().render()
