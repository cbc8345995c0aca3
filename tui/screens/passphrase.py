"""The passphrase of an encrypted repository, typed without echo.

Asked from a worker thread the first time the console opens the repository
(:func:`core.repo.sealed.set_prompt`); the keys then stay in the console's memory.
Esc gives no passphrase: the console says the repository is locked, and does not ask
again until the devices are rescanned (``r``).
"""

from __future__ import annotations

from rich.markup import escape
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Input, Static


class PassphraseScreen(ModalScreen[bytes | None]):
    """Ask for ``what`` (e.g. "passphrase of /backup/vault"); dismiss with it, or None."""

    BINDINGS = [Binding("escape", "cancel", "Cancel", id="passphrase.cancel")]
    DEFAULT_CSS = """
    PassphraseScreen { align: center middle; }
    PassphraseScreen > Vertical { width: 64; max-width: 100%; height: auto;
                                  border: thick $primary; background: $surface; padding: 1 2; }
    PassphraseScreen Input { margin-top: 1; }
    """

    def __init__(self, what: str) -> None:
        super().__init__()
        self.what = what

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Static(f"The repository is encrypted: type the {escape(self.what)}.")
            yield Input(password=True, id="passphrase")
            yield Static("Enter unlocks, Esc leaves it locked", classes="hint")

    def on_mount(self) -> None:
        self.query_one("#passphrase", Input).focus()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        self.dismiss(event.value.encode() or None)

    def action_cancel(self) -> None:
        self.dismiss(None)
