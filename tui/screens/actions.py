"""What can be done with the highlighted volume (Enter on the device tree)."""

from __future__ import annotations

from rich.markup import escape
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import OptionList, Static
from textual.widgets.option_list import Option

ACTIONS = (
    ("backup", "Back up: image (b)"),
    ("increment", "Back up: file-level increment (i)"),
    ("restore", "Restore… (R)"),
    ("refresh", "Check again"),
)


class ActionsScreen(ModalScreen[str | None]):
    """A menu of actions for ``device``; dismisses with the action's name or None."""

    BINDINGS = [Binding("escape", "dismiss(None)", "Back", id="actions.back")]
    DEFAULT_CSS = """
    ActionsScreen { align: center middle; }
    ActionsScreen > Vertical { width: 50; max-width: 100%; height: auto; border: thick $primary;
                               background: $surface; padding: 0 1; }
    ActionsScreen OptionList { height: auto; }
    """

    def __init__(self, device: str, *, read_only: bool = False) -> None:
        super().__init__()
        self.device = device
        self.read_only = read_only

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Static(f"[b]{escape(self.device)}[/b]")
            yield OptionList(
                *(
                    Option(label, id=name)
                    for name, label in ACTIONS
                    if not (self.read_only and name == "restore")
                )
            )

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        self.dismiss(event.option.id)
