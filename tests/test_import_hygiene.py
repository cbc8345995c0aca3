"""core/ is a library with no user interface: it must not import textual or tui."""

import subprocess
import sys

from cliutil import ROOT


def test_core_imports_neither_textual_nor_tui():
    code = (
        "import pkgutil, importlib, sys, core\n"
        "for m in pkgutil.walk_packages(core.__path__, 'core.'):\n"
        "    importlib.import_module(m.name)\n"
        "bad = sorted(n for n in sys.modules if n.split('.')[0] in ('textual', 'tui'))\n"
        "print(bad)\n"
    )
    p = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True
    )
    assert p.stdout.strip() == "[]", f"core imported UI modules: {p.stdout}"
