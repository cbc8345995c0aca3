"""blockvault's core: every piece of real work, with no user interface.

Nothing in this package imports Textual or ``tui``; a test enforces it.
"""
