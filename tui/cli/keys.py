"""Passphrases on the command line's terminal, and ``blockvault repo key …``.

A passphrase is read from ``$BLOCKVAULT_PASSPHRASE_FILE``, the output of
``$BLOCKVAULT_PASSPHRASE_COMMAND``, or typed at the terminal without echo — never taken
from an argument (the process list and shell history would keep it). A new passphrase
(``repo init --encryption``, ``key add``, ``key passwd``) is typed twice, or read from
``$BLOCKVAULT_NEW_PASSPHRASE_FILE`` (``$BLOCKVAULT_PASSPHRASE_FILE`` for ``init``).
"""

from __future__ import annotations

import argparse
import getpass
import sys
from typing import TYPE_CHECKING

from core.errors import BlockvaultError
from core.repo.crypto import (
    NEW_PASSPHRASE_FILE_ENV,
    PASSPHRASE_FILE_ENV,
    LockedRepository,
    export_keys,
    passphrase_from_env,
    wrap,
)
from core.repo.repository import Repository, now_iso
from core.repo.sealed import forget_keys, set_prompt
from tui.cli.output import escape, print_json

if TYPE_CHECKING:
    from rich.console import Console


def _typed(prompt: str) -> bytes | None:
    if not sys.stdin.isatty():
        return None
    try:
        text = getpass.getpass(f"{prompt}: ")
    except (EOFError, KeyboardInterrupt):
        return None
    return text.encode() or None


def use_terminal_prompt() -> None:
    """Let an encrypted repository ask for its passphrase when stdin is a terminal."""
    if sys.stdin.isatty():
        set_prompt(_typed)


def new_passphrase(file_env: str) -> bytes:
    """Return a new passphrase from ``file_env`` or typed twice at the terminal."""
    given = passphrase_from_env(file_env)
    if given is not None:
        return given
    first = _typed("new passphrase")
    if first is None:
        raise LockedRepository(
            f"a new passphrase is needed: type it at a terminal or give it with {file_env}"
        )
    if _typed("the same passphrase again") != first:
        raise LockedRepository("the two passphrases differ; nothing was changed")
    return first


def init_passphrase(encryption: str) -> bytes | None:
    """Return the passphrase a new encrypted repository is made with (None: plain)."""
    if encryption == "none":
        return None
    return new_passphrase(PASSPHRASE_FILE_ENV)


def cmd_repo_key(args: argparse.Namespace, repo: Repository, out: Console) -> int:
    """``repo key list|add|remove|passwd|export``: the wrapped copies of the keys."""
    sealed = repo.config.encryption
    if sealed is None or repo.keys is None:
        raise BlockvaultError(f"{repo.location} is not encrypted: it has no keys")
    slots = list(sealed["slots"])
    names = [s["name"] for s in slots]
    action, name = args.key_action or "list", args.slot
    if action == "list":
        rows = [{"name": s["name"], "created": s["created"], "kdf": s["kdf"]} for s in slots]
        if args.json:
            print_json({"cipher": sealed["cipher"], "key_id": sealed["key_id"], "slots": rows})
        else:
            out.print(f"{escape(repo.location)}: {sealed['cipher']}, keys {sealed['key_id']}")
            for r in rows:
                out.print(
                    f"  {escape(r['name'])}  passphrase (argon2id), added {r['created'][:19]}"
                )
        return 0
    if action == "export":
        if args.json:
            raise BlockvaultError("repo key export prints a key file, not JSON; drop --json")
        sys.stdout.write(export_keys(repo.keys, repo.config.id))
        return 0
    if action == "add":
        name = name or f"key{len(slots) + 1}"
        if name in names:
            raise BlockvaultError(f"a key copy named {name!r} exists; choose another name")
        slots.append(
            wrap(
                repo.keys, new_passphrase(NEW_PASSPHRASE_FILE_ENV), name, repo.config.id, now_iso()
            )
        )
        repo.save_slots(slots)
        out.print(f"added key copy {escape(name)}: its passphrase opens {escape(repo.location)}")
        return 0
    if name is None or name not in names:
        raise BlockvaultError(
            f"repo key {action} needs the name of a key copy: one of {', '.join(names)}"
        )
    if action == "remove":
        if len(slots) == 1:
            raise BlockvaultError(
                f"{name!r} is the only key copy: removing it would lock the repository for "
                "good; add another first"
            )
        repo.save_slots([s for s in slots if s["name"] != name])
        forget_keys(repo.config.id)
        out.print(f"removed key copy {escape(name)}: its passphrase no longer opens the repository")
        return 0
    fresh = wrap(
        repo.keys, new_passphrase(NEW_PASSPHRASE_FILE_ENV), name, repo.config.id, now_iso()
    )
    repo.save_slots([fresh if s["name"] == name else s for s in slots])
    out.print(f"changed the passphrase of key copy {escape(name)}; no data was rewritten")
    return 0


def init_result(repo: Repository) -> dict[str, object]:
    """Return what ``repo init --json`` says of a new repository (never a key)."""
    sealed = repo.config.encryption
    return {
        "location": repo.location,
        "id": repo.config.id,
        "keep_versions": repo.config.keep_versions,
        "encryption": sealed["cipher"] if sealed else "none",
    }
