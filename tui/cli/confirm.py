"""The typed confirmation a destructive command needs: ``--confirm NAME`` or the name typed."""

from __future__ import annotations

import argparse
import os
import sys

from core.errors import BlockvaultError


class ConfirmationRefused(BlockvaultError):
    """The user did not confirm a destructive command by the exact name."""


def confirm_by_name(args: argparse.Namespace, name: str, what: str) -> None:
    """Require ``--confirm NAME`` or, on a terminal, the name typed; raise otherwise."""
    if getattr(args, "noprompt", False):
        raise ConfirmationRefused(
            f"-noprompt is not accepted for {what}: name the target with --confirm {name}"
        )
    given = args.confirm
    if given is None:
        if not sys.stdin.isatty() or args.json:
            raise ConfirmationRefused(
                f"{what} needs confirmation: add --confirm {name}; nothing was changed"
            )
        print(f"This will {what}. Type {name} to confirm: ", end="", file=sys.stderr, flush=True)
        given = sys.stdin.readline().strip()
    if given != name and os.path.realpath(given) != os.path.realpath(name):
        raise ConfirmationRefused(
            f"confirmation '{given}' does not name {name}; nothing was changed"
        )
