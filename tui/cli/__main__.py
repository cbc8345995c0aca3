"""``python -m tui.cli``: the command line, as the ``blockvault`` console script runs it."""

import sys

from tui.cli import main

sys.exit(main())
