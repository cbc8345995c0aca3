"""The console's colour themes: TOML files validated into Textual ``Theme`` objects.

Themes are data, not code (as in posting): one TOML file per theme, holding the
fields of :class:`textual.theme.Theme` and an optional ``[variables]`` table that
overrides Textual's generated CSS variables. Every value is checked when the file
is loaded, so a typo surfaces as a one-line :class:`ThemeError` naming the file,
not as a stylesheet error the first time the theme is drawn.

Two places hold themes:

* :data:`PROJECT_THEME_DIR`, the project's top-level ``themes/`` folder. It is a
  package of data files, found through the import system, so a source checkout, an
  editable install and a wheel (``pip install .``) all carry it.
* :func:`user_theme_dir`, where a user adds themes or overrides a shipped one by
  reusing its name.
"""

from __future__ import annotations

import difflib
import os
import re
import tomllib
from importlib import resources
from pathlib import Path
from typing import Any

from textual.color import Color, ColorParseError
from textual.css.constants import VALID_STYLE_FLAGS
from textual.theme import Theme

from core.errors import BlockvaultError

PROJECT_THEME_DIR = Path(str(resources.files("themes")))
"""The shipped ``themes/`` folder (see the module docstring for why it is found this way)."""

DEFAULT_THEME = "blockvault-dark"
"""The theme the console starts with unless the user or the terminal asks otherwise."""

SIXTEEN_COLOUR_THEME = "blockvault-16"
"""The theme built from the terminal's own 16-colour palette."""

COLOUR_KEYS = (
    "primary",
    "secondary",
    "accent",
    "warning",
    "error",
    "success",
    "foreground",
    "background",
    "surface",
    "panel",
    "boost",
)
"""Top-level keys whose value is a colour."""

_BOOL_KEYS = ("dark", "ansi")
_FRACTION_KEYS = ("luminosity_spread", "text_alpha")
ALLOWED_KEYS = frozenset({"name", "variables", *COLOUR_KEYS, *_BOOL_KEYS, *_FRACTION_KEYS})
"""Every top-level key a theme file may use: the fields of ``textual.theme.Theme``."""

# Textual's CSS tokenizer accepts these characters after `$` in a variable reference.
_VARIABLE_NAME = re.compile(r"[a-zA-Z0-9_-]+")
# The optional alpha after a colour in a variable, as Textual writes "auto 87%".
_PERCENT = re.compile(r"\d+(\.\d+)?%")
_EXAMPLE_COLOUR = "'#1e88e5'"

# TERM values of terminals that show 16 colours. Only a short, explicit list: for
# anything else Rich downgrades the RGB themes well enough, and guessing wrong would
# hand a truecolour terminal the plainest theme.
_SIXTEEN_COLOUR_TERMS = frozenset(
    {"linux", "xterm", "xterm-color", "xterm-16color", "vt100", "vt220", "ansi", "screen", "tmux"}
)


class ThemeError(BlockvaultError):
    """A theme file cannot be used; the message names the file, the key and the fix."""


def user_theme_dir() -> Path:
    """Return the folder the user's own theme files live in.

    ``$XDG_CONFIG_HOME/blockvault/themes``, or ``~/.config/blockvault/themes`` when
    ``XDG_CONFIG_HOME`` is unset or empty (as the XDG spec says).
    """
    config_home = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(config_home) / "blockvault" / "themes"


def pick_default(term: str | None, colorterm: str | None) -> str:
    """Return the theme name to start with on a terminal described by TERM and COLORTERM.

    ``blockvault-16`` when COLORTERM is unset and TERM is one of a few names known to
    mean 16 colours (``linux``, plain ``xterm``, ``vt100``, ``screen``, …);
    :data:`DEFAULT_THEME` otherwise. A user's explicit choice should win over this.

    Args:
        term: The ``TERM`` environment variable, or None if unset.
        colorterm: The ``COLORTERM`` environment variable, or None if unset.
    """
    # COLORTERM (truecolor/24bit) is set only by terminals with more than 16 colours.
    if colorterm:
        return DEFAULT_THEME
    return SIXTEEN_COLOUR_THEME if term in _SIXTEEN_COLOUR_TERMS else DEFAULT_THEME


def load_theme_file(path: Path) -> Theme:
    """Return the theme a TOML file describes, with every value checked.

    Args:
        path: The theme file.

    Raises:
        ThemeError: The file is unreadable, is not TOML, has an unknown or missing
            key, or a value of the wrong kind (a bad colour, a bad text style, …).
    """
    try:
        with path.open("rb") as file:
            data = tomllib.load(file)
    except OSError as error:
        raise ThemeError(
            f"{path}: cannot be read ({error.strerror}); check that it exists and is readable"
        ) from error
    except tomllib.TOMLDecodeError as error:
        raise ThemeError(f"{path}: not valid TOML ({error}); fix the syntax there") from error

    for key in data:
        if key not in ALLOWED_KEYS:
            raise ThemeError(f"{path}: unknown key {key!r}; {_allowed_hint(key)}")

    name = data.get("name")
    if name is None:
        raise ThemeError(f"{path}: 'name' is missing; add a line such as name = \"my-theme\"")
    if not isinstance(name, str) or not name.strip():
        raise ThemeError(f"{path}: 'name' must be a non-empty string such as \"my-theme\"")
    if "primary" not in data:
        raise ThemeError(
            f"{path}: 'primary' is missing; add a colour such as primary = \"#1e88e5\""
        )

    fields: dict[str, Any] = {"name": name}
    for key in COLOUR_KEYS:
        if key in data:
            fields[key] = _check_colour(path, repr(key), data[key])
    for key in _BOOL_KEYS:
        if key in data:
            if not isinstance(data[key], bool):
                raise ThemeError(f"{path}: {key!r} must be true or false, not {data[key]!r}")
            fields[key] = data[key]
    for key in _FRACTION_KEYS:
        if key in data:
            fields[key] = _check_fraction(path, key, data[key])
    fields["variables"] = _check_variables(path, data.get("variables", {}))
    return Theme(**fields)


def load_themes(
    user_dir: Path | None = None, *, project_dir: Path = PROJECT_THEME_DIR
) -> tuple[list[Theme], list[str]]:
    """Return the project's themes and the user's, and a one-line problem per unusable file.

    Project themes come first, in file-name order, then the user's. A user theme with
    the name of a project theme replaces it (keeping its place in the list). A file
    that fails to load is left out and reported, so one broken user file cannot stop
    the console from starting.

    Args:
        user_dir: The user's theme folder; :func:`user_theme_dir` when None. A
            missing folder is normal (the user has no themes) and not a problem.
        project_dir: The shipped themes; tests may point it elsewhere.
    """
    themes: dict[str, Theme] = {}
    problems: list[str] = []
    if not project_dir.is_dir():
        problems.append(
            f"{project_dir}: theme folder not found; run blockvault from its source "
            "checkout or an editable install (pip install -e .)"
        )
    else:
        themes.update(_load_folder(project_dir, problems))
    user_dir = user_theme_dir() if user_dir is None else user_dir
    if user_dir.is_dir():
        # dict.update keeps an overridden name at its first position.
        themes.update(_load_folder(user_dir, problems))
    return list(themes.values()), problems


def _load_folder(folder: Path, problems: list[str]) -> dict[str, Theme]:
    """Return the themes of one folder by name; append a line to problems per bad file."""
    try:
        # iterdir, not glob: glob hides an unreadable folder behind an empty result.
        paths = sorted(path for path in folder.iterdir() if path.suffix == ".toml")
    except OSError as error:
        problems.append(f"{folder}: cannot be listed ({error.strerror}); check its permissions")
        return {}
    loaded: dict[str, Theme] = {}
    first_file: dict[str, Path] = {}
    for path in paths:
        try:
            theme = load_theme_file(path)
        except ThemeError as error:
            problems.append(error.message)
            continue
        # Two files of one folder with one name: which wins would depend on file names.
        if theme.name in first_file:
            problems.append(
                f"{path}: theme name {theme.name!r} is already used by "
                f"{first_file[theme.name].name}; give one of them another name"
            )
            continue
        first_file[theme.name] = path
        loaded[theme.name] = theme
    return loaded


def _allowed_hint(key: str) -> str:
    """Return the fix for an unknown key: the nearest allowed key, or the allowed list."""
    close = difflib.get_close_matches(key, sorted(ALLOWED_KEYS), n=1)
    if close:
        return f"did you mean {close[0]!r}?"
    return "allowed keys are " + ", ".join(sorted(ALLOWED_KEYS))


def _check_colour(path: Path, what: str, value: object) -> str:
    """Return value if Textual can parse it as a colour; raise ThemeError otherwise."""
    if not isinstance(value, str):
        raise ThemeError(
            f"{path}: {what} must be a string such as {_EXAMPLE_COLOUR}, not {value!r}"
        )
    try:
        Color.parse(value)
    except ColorParseError as error:
        fix = (
            f"did you mean {error.suggested_color!r}?"
            if error.suggested_color
            else f"use a colour such as {_EXAMPLE_COLOUR}"
        )
        raise ThemeError(f"{path}: {what} is not a colour ({value!r}); {fix}") from error
    return value


def _check_fraction(path: Path, key: str, value: object) -> float:
    """Return value as a float if it is a number from 0 to 1; raise ThemeError otherwise."""
    # bool is an int in Python; `true` is not a meaningful fraction.
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
        raise ThemeError(
            f"{path}: {key!r} must be a number from 0 to 1, such as 0.15, not {value!r}"
        )
    return float(value)


def _check_variables(path: Path, variables: object) -> dict[str, str]:
    """Return the ``[variables]`` table if every entry is a valid colour or text style."""
    if not isinstance(variables, dict):
        raise ThemeError(
            f"{path}: 'variables' must be a table; write it as [variables] followed by "
            "lines such as border = \"#1e88e5\""
        )
    for name, value in variables.items():
        what = f"variable {name!r}"
        if not _VARIABLE_NAME.fullmatch(name):
            raise ThemeError(
                f"{path}: {what} is not a usable name; use letters, digits, '-' and '_' only"
            )
        if not isinstance(value, str):
            raise ThemeError(f"{path}: {what} must be a string, not {value!r}")
        # Textual's own variables ending in -style (block-cursor-text-style, link-style)
        # take text-style words; all the others are colours.
        if name.endswith("-style"):
            words = value.split()
            if not words or any(word not in VALID_STYLE_FLAGS for word in words):
                raise ThemeError(
                    f"{path}: {what} is not a text style ({value!r}); "
                    "use words such as 'bold', 'underline', 'reverse' or 'none'"
                )
        else:
            _check_variable_colour(path, what, value)
    return dict(variables)


def _check_variable_colour(path: Path, what: str, value: str) -> None:
    """Raise ThemeError unless value is a colour as Textual's CSS takes it in a variable.

    That is a colour, ``auto`` (black or white, whichever reads on the background),
    either optionally followed by an alpha such as ``60%``; or ``initial``.
    """
    if value == "initial":
        return
    colour, _, alpha = value.partition(" ")
    if alpha and not _PERCENT.fullmatch(alpha.strip()):
        raise ThemeError(
            f"{path}: {what} has a bad alpha ({value!r}); write a colour and a percentage "
            "such as '#1e88e5 50%'"
        )
    if colour != "auto":
        _check_colour(path, what, colour)
