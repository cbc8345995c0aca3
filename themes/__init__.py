"""The themes shipped with blockvault: one TOML file per theme, loaded by :mod:`tui.themes`.

A package only so that a wheel carries the files (``pip install .``, not just an
editable install); it holds no code. Users add their own themes in
``~/.config/blockvault/themes``.
"""
