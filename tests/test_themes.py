"""Theme files: the shipped ones load, apply and read well; bad files fail with a fix."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
from pathlib import Path

import pytest
from textual.app import App
from textual.color import Color
from textual.theme import Theme

from tui.themes import (
    ALLOWED_KEYS,
    COLOUR_KEYS,
    DEFAULT_THEME,
    PROJECT_THEME_DIR,
    ThemeError,
    load_theme_file,
    load_themes,
    pick_default,
    user_theme_dir,
)

SHIPPED = {"blockvault-dark", "blockvault-light", "blockvault-contrast", "blockvault-16"}
SEVERITIES = ("warning", "error", "success")


def shipped_themes() -> list[Theme]:
    """Return the project's themes, failing the test if any file has a problem."""
    themes, problems = load_themes(user_dir=Path("/nonexistent"))
    assert problems == []
    return themes


def write(folder: Path, name: str, text: str) -> Path:
    """Return the path of a theme file written into folder."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(text)
    return path


def contrast(a: str, b: str) -> float:
    """Return the WCAG contrast ratio of two colours (1 to 21)."""

    def luminance(colour: Color) -> float:
        def channel(value: int) -> float:
            c = value / 255
            return c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4

        return 0.2126 * channel(colour.r) + 0.7152 * channel(colour.g) + 0.0722 * channel(colour.b)

    high, low = sorted((luminance(Color.parse(a)), luminance(Color.parse(b))), reverse=True)
    return (high + 0.05) / (low + 0.05)


def test_project_ships_the_four_themes_and_the_default():
    names = {theme.name for theme in shipped_themes()}
    assert names == SHIPPED
    assert DEFAULT_THEME in names
    assert PROJECT_THEME_DIR.is_dir()


def test_every_shipped_theme_registers_and_paints_the_screen():
    async def main() -> None:
        app: App[None] = App()
        for theme in shipped_themes():
            app.register_theme(theme)
        async with app.run_test() as pilot:
            for theme in shipped_themes():
                app.theme = theme.name
                await pilot.pause()
                assert app.current_theme.name == theme.name
                # The screen's background comes from $background: proof the theme reached CSS.
                assert app.screen.styles.background == Color.parse(theme.background)

    asyncio.run(main())


@pytest.mark.parametrize("name", sorted(SHIPPED - {"blockvault-16"}))
def test_rgb_themes_keep_text_readable(name: str):
    theme = next(t for t in shipped_themes() if t.name == name)
    css = theme.to_color_system().generate()
    # WCAG AAA (7:1) for body text on every surface text sits on.
    for ground in ("background", "surface", "panel"):
        assert contrast(css["foreground"], css[ground]) >= 7, ground
    # Severity words are drawn with $text-warning etc.: at least AA (4.5:1).
    for severity in SEVERITIES:
        for ground in ("background", "surface", "panel"):
            assert contrast(css[f"text-{severity}"], css[ground]) >= 4.5, (severity, ground)
        assert contrast(css[severity], css["background"]) >= 4.5, severity


def test_contrast_theme_is_black_and_white_with_bright_colours():
    theme = next(t for t in shipped_themes() if t.name == "blockvault-contrast")
    assert Color.parse(theme.background) == Color.parse("#000000")
    assert Color.parse(theme.foreground) == Color.parse("#ffffff")
    for key in ("primary", "secondary", "accent", *SEVERITIES):
        assert contrast(getattr(theme, key), "#000000") >= 7, key


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_severity_colours_are_distinguishable(name: str):
    theme = next(t for t in shipped_themes() if t.name == name)
    colours = [Color.parse(getattr(theme, key)) for key in SEVERITIES]
    for a, b in itertools.combinations(colours, 2):
        if theme.ansi:
            assert a.ansi != b.ansi
        else:
            # Euclidean RGB distance: 100 keeps amber, red and green well apart.
            distance = sum((x - y) ** 2 for x, y in zip(a.rgb, b.rgb, strict=True)) ** 0.5
            assert distance >= 100, (a, b)


def test_16_colour_theme_uses_only_the_terminal_palette():
    theme = next(t for t in shipped_themes() if t.name == "blockvault-16")
    assert theme.ansi
    colours = [getattr(theme, key) for key in COLOUR_KEYS]
    colours += [v for k, v in theme.variables.items() if not k.endswith("-style")]
    for colour in colours:
        assert Color.parse(colour).ansi is not None, colour


def test_allowed_keys_are_exactly_textual_theme_fields():
    # Catches a Textual upgrade that adds or renames a Theme field.
    assert {field.name for field in dataclasses.fields(Theme)} == ALLOWED_KEYS


def test_a_good_file_becomes_a_theme(tmp_path: Path):
    path = write(
        tmp_path,
        "sea.toml",
        'name = "sea"\ndark = false\nprimary = "#1e88e5"\nerror = "ansi_red"\n'
        "luminosity_spread = 0.2\n"
        '[variables]\nborder = "#1e88e5 50%"\ntext = "auto 90%"\n'
        'link-style = "bold underline"\n',
    )
    theme = load_theme_file(path)
    assert (theme.name, theme.dark, theme.primary, theme.error) == (
        "sea",
        False,
        "#1e88e5",
        "ansi_red",
    )
    assert theme.luminosity_spread == 0.2
    assert theme.variables["link-style"] == "bold underline"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('name = "x"\nprimary = "#12"\n', "'primary' is not a colour ('#12')"),
        ('name = "x"\nprimary = "#1e88e5"\nsecundary = "#fff"\n', "did you mean 'secondary'"),
        ('primary = "#1e88e5"\n', "'name' is missing"),
        ('name = "x"\nprimary = \n', "not valid TOML"),
        ('name = "x"\n', "'primary' is missing"),
        ('name = "x"\nprimary = "#1e88e5"\ndark = "yes"\n', "'dark' must be true or false"),
        ('name = "x"\nprimary = "blu"\n', "did you mean 'blue'"),
        ('name = "x"\nprimary = "#1e88e5"\n[variables]\nborder = "#zz"\n', "'border'"),
        ('name = "x"\nprimary = "#1e88e5"\n[variables]\nlink-style = "loud"\n', "text style"),
    ],
    ids=[
        "bad-colour",
        "unknown-key",
        "missing-name",
        "toml-syntax",
        "missing-primary",
        "dark-not-bool",
        "misspelt-colour-name",
        "bad-variable-colour",
        "bad-variable-style",
    ],
)
def test_bad_theme_file_names_the_file_and_the_problem(tmp_path: Path, text: str, expected: str):
    path = write(tmp_path, "broken.toml", text)
    with pytest.raises(ThemeError) as caught:
        load_theme_file(path)
    message = caught.value.message
    assert message.startswith(f"{path}: ")
    assert expected in message
    assert "\n" not in message


def test_user_theme_overrides_project_theme_by_name(tmp_path: Path):
    write(tmp_path, "mine.toml", f'name = "{DEFAULT_THEME}"\nprimary = "#ff0000"\n')
    project_names = [t.name for t in shipped_themes()]
    themes, problems = load_themes(user_dir=tmp_path)
    assert problems == []
    # Same names in the same order: the override takes the project theme's place.
    assert [t.name for t in themes] == project_names
    assert next(t for t in themes if t.name == DEFAULT_THEME).primary == "#ff0000"


def test_broken_user_file_is_reported_and_the_others_still_load(tmp_path: Path):
    write(tmp_path, "good.toml", 'name = "good"\nprimary = "#1e88e5"\n')
    write(tmp_path, "bad.toml", 'name = "bad"\nprimary = "#12"\n')
    themes, problems = load_themes(user_dir=tmp_path)
    names = {t.name for t in themes}
    assert names == SHIPPED | {"good"}
    assert len(problems) == 1
    assert "bad.toml" in problems[0]


def test_two_files_with_one_name_in_a_folder_are_reported(tmp_path: Path):
    write(tmp_path, "a.toml", 'name = "same"\nprimary = "#1e88e5"\n')
    write(tmp_path, "b.toml", 'name = "same"\nprimary = "#ff0000"\n')
    themes, problems = load_themes(user_dir=tmp_path)
    assert next(t for t in themes if t.name == "same").primary == "#1e88e5"
    assert len(problems) == 1
    assert "b.toml" in problems[0] and "a.toml" in problems[0]


def test_missing_project_folder_is_a_problem_not_a_crash(tmp_path: Path):
    write(tmp_path / "user", "good.toml", 'name = "good"\nprimary = "#1e88e5"\n')
    themes, problems = load_themes(user_dir=tmp_path / "user", project_dir=tmp_path / "gone")
    assert [t.name for t in themes] == ["good"]
    assert len(problems) == 1
    assert "gone" in problems[0]


def test_user_theme_dir_honours_xdg_config_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    assert user_theme_dir() == tmp_path / "config" / "blockvault" / "themes"


def test_user_theme_dir_falls_back_to_dot_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("XDG_CONFIG_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert user_theme_dir() == tmp_path / ".config" / "blockvault" / "themes"


@pytest.mark.parametrize(
    ("term", "colorterm", "expected"),
    [
        ("linux", None, "blockvault-16"),
        ("xterm", None, "blockvault-16"),
        ("xterm", "truecolor", DEFAULT_THEME),
        ("xterm-256color", None, DEFAULT_THEME),
        (None, None, DEFAULT_THEME),
    ],
)
def test_pick_default_suggests_16_colours_only_for_known_16_colour_terminals(
    term: str | None, colorterm: str | None, expected: str
):
    assert pick_default(term, colorterm) == expected


def test_device_tree_guides_are_visible_in_every_theme(monkeypatch: pytest.MonkeyPatch):
    """The tree's guide lines read against the pane in every theme, focused or not."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from screenshots.scene import SceneServices
    from tui.app import BlockvaultApp

    monkeypatch.delenv("SSH_CONNECTION", raising=False)
    monkeypatch.delenv("SSH_TTY", raising=False)
    seen: list[tuple[str, bool]] = []

    async def main() -> None:
        app = BlockvaultApp(services=SceneServices(), watch_devices=False)
        async with app.run_test(size=(80, 24)) as pilot:
            tree = app.query_one("#devices")
            for theme in shipped_themes():
                app.theme = theme.name
                for focused in (True, False):
                    (tree if focused else app.query_one("#jobs")).focus()
                    await pilot.pause()
                    guides = tree.get_component_rich_style("tree--guides")
                    ground = tree.rich_style.bgcolor
                    assert guides.color is not None and ground is not None
                    where = (theme.name, focused)
                    if theme.ansi:
                        # The terminal's palette: neither black (the console's background)
                        # nor the background itself.
                        assert guides.color.number not in (None, 0), (where, guides.color)
                        assert guides.color != ground, where
                    else:
                        pair = (guides.color.triplet.hex, ground.triplet.hex)
                        assert contrast(*pair) >= 3, (where, pair)
                    seen.append(where)

    asyncio.run(main())
    assert len(seen) == 2 * len(SHIPPED)
