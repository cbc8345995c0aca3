"""The help overlay (``?``): every key of the console, grouped by where it applies."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Static

HELP = """\
[b]blockvault[/b] — image backups of this machine's volumes

[b]Devices (left)[/b]
  ↑ ↓ j k      move            g G   top / bottom
  /            filter by name, file system or mount point (Esc clears)
  Enter        actions for the highlighted volume
  b            back up the volume (image or increment)
  i            take a file-level increment of the volume
  R            restore: version → target → options → findings → typed name
  r  F5        rescan devices (also automatic when devices come and go)

[b]Jobs (bottom)[/b]
  Tab          move between devices, jobs and the right pane
  c            cancel the highlighted job (asks; only its button says yes)
  space        pause / resume live updates

[b]Anywhere[/b]
  1  2         show volume details / the job's report and graph
  t            next theme          Ctrl+P  command palette
  ?            this help           q       quit (asks while jobs run)
  Esc          back out of any dialog; never destructive

[b]Restores[/b] write nothing until the target's exact name is typed;
a blocker (the target mounted, too small, holding the repository…) cannot
be confirmed away, and warnings must be scrolled past first.

[b]Return codes[/b] as TSM: 0 ok, 4 files skipped, 8 warnings, 12 failed.
"""


class HelpScreen(ModalScreen[None]):
    """The keys and what they do; any of ``?``, Esc or q closes it."""

    BINDINGS = [Binding("escape,question_mark,q", "dismiss", "Close", id="help.close")]
    DEFAULT_CSS = """
    HelpScreen { align: center middle; }
    HelpScreen > VerticalScroll { width: 80; max-width: 100%; height: auto; max-height: 100%;
                                  border: thick $primary; background: $surface; padding: 0 1; }
    """

    def compose(self) -> ComposeResult:
        with VerticalScroll():
            yield Static(HELP)
