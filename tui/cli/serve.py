"""``blockvault serve`` (the repository server), ``serve node add|list|remove``, and ``login``."""

from __future__ import annotations

import argparse
import getpass
import json
import os
import sys
from typing import TYPE_CHECKING, Any

from core.errors import BlockvaultError
from core.repo.remote import (
    TOKEN_FILE_ENV,
    Credentials,
    RemoteStore,
    ServerError,
    normalize_url,
    save_login,
    token_from_env,
)
from core.server.meta import meta_at
from core.server.nodes import NodeRegistry
from core.server.serve import DEFAULT_PORT, DEFAULT_STATE_DIR, ServeOptions, serve
from tui.cli.output import escape, help_page

if TYPE_CHECKING:
    from rich.console import Console


def cmd_serve(args: argparse.Namespace, out: Console) -> int:
    if args.node_action:
        return _cmd_node(args, out)
    if not args.store:
        raise BlockvaultError("blockvault serve needs --store PATH (the datastore directory)")
    return serve(
        ServeOptions(
            store=args.store,
            listen=args.listen,
            state_dir=args.state,
            tls_cert=args.tls_cert,
            tls_key=args.tls_key,
            insecure_http=args.insecure_http,
        )
    )


def _cmd_node(args: argparse.Namespace, out: Console) -> int:
    if not args.store:
        raise BlockvaultError(f"serve node {args.node_action} needs --store PATH (the datastore)")
    registry = NodeRegistry(meta_at(args.store))
    if args.node_action == "list":
        nodes = [n.public() for n in registry.nodes().values()]
        if args.json:
            print(json.dumps({"nodes": nodes}))
        else:
            for n in nodes:
                state = f"revoked {n['revoked']}" if n["revoked"] else "active"
                role = "admin" if n["admin"] else "node"
                out.print(f"{escape(str(n['name']))}  {role}  added {n['created']}  {state}")
            if not nodes:
                out.print("no nodes; add one with 'blockvault serve node add NAME --store PATH'")
        return 0
    if args.node_action == "remove":
        node = registry.remove(args.name)
        if args.json:
            print(json.dumps({"removed": node.public()}))
        else:
            out.print(f"removed node {escape(node.name)}: its token is revoked; its backups stay")
        return 0
    if args.json and not args.token_file:
        raise BlockvaultError("serve node add --json needs --token-file FILE: a token never "
                              "goes into JSON output")
    token = registry.add(args.name, admin=args.admin)
    if args.token_file:
        fd = os.open(args.token_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(token + "\n")
    node = registry.nodes()[args.name]
    if args.json:
        print(json.dumps({"added": node.public(), "token_file": args.token_file}))
        return 0
    role = "admin" if args.admin else "node"
    out.print(f"added {role} {escape(args.name)}")
    if args.token_file:
        out.print(f"its token is in {escape(args.token_file)} (0600); give it to the node's root")
    else:
        # Shown once, on the terminal only: the registry keeps a hash.
        out.print("its token (shown once; the server keeps only a hash):")
        print(token, flush=True)
    return 0


def cmd_login(args: argparse.Namespace, out: Console) -> int:
    from core.tls import fingerprint_of_der, normalize_fingerprint, server_certificate

    url = normalize_url(args.url)
    token = _read_token()
    pin: str | None = None
    if url.startswith("https://"):
        host, port = url[len("https://") :].rsplit(":", 1)
        try:
            seen = fingerprint_of_der(server_certificate(host.strip("[]"), int(port)))
        except OSError as e:
            raise ServerError(f"cannot reach the repository server {url}: {e}") from None
        if args.fingerprint:
            try:
                pin = normalize_fingerprint(args.fingerprint)
            except ValueError as e:
                raise ServerError(f"--fingerprint: {e}") from None
            if pin != seen:
                raise ServerError(
                    f"the server {url} presents certificate {seen}, but --fingerprint gives "
                    f"{pin}: refused"
                )
        elif sys.stdin.isatty() and not args.json:
            out.print(f"the server {escape(url)} presents certificate\n  {seen}")
            answer = input("is that the fingerprint 'blockvault serve' printed? [y/N] ")
            if answer.strip().lower() not in ("y", "yes"):
                raise ServerError("login stopped: the fingerprint was not confirmed")
            pin = seen
        else:
            raise ServerError("login needs --fingerprint FP (what 'blockvault serve' printed) "
                              "when it cannot ask on a terminal")
    credentials = Credentials(args.node, token, pin)
    store = RemoteStore(url, credentials)
    try:
        store.hello()
    finally:
        store.close()
    path = save_login(url, credentials)
    if args.json:
        print(json.dumps({"server": url, "node": store.node, "fingerprint": pin,
                          "login_file": path}))
    else:
        out.print(f"logged in to {escape(url)} as node {escape(store.node)}; "
                  f"saved in {escape(path)} (0600)")
    return 0


def _read_token() -> str:
    token = token_from_env()
    if token:
        return token
    if not sys.stdin.isatty():
        raise ServerError(f"login needs the node's token: give it in {TOKEN_FILE_ENV}, or run "
                          "on a terminal to type it")
    token = getpass.getpass("node token (not shown): ").strip()
    if not token:
        raise ServerError("no token typed; nothing was saved")
    return token


def add_parsers(sub: Any, common: argparse.ArgumentParser) -> None:
    """Add ``serve``, ``serve node …`` and ``login`` to the command line's subparsers."""
    p = sub.add_parser(
        "serve",
        help="the repository server (and its nodes)",
        **help_page(
            "Serve the datastore PATH to many hosts (nodes) over HTTPS. On first start it "
            "makes a self-signed certificate in --state and prints its fingerprint, which "
            "clients pin. Nodes are added with 'serve node add NAME'; each gets a token.",
            f"blockvault serve --store /srv/blockvault --listen 0.0.0.0:{DEFAULT_PORT}",
            "blockvault serve node add web1 --store /srv/blockvault --token-file /root/web1.token",
            "blockvault serve node list --store /srv/blockvault",
        ),
    )
    p.add_argument("--store", metavar="PATH", help="the datastore directory")
    p.add_argument("--listen", metavar="HOST:PORT", default=f"127.0.0.1:{DEFAULT_PORT}",
                   help=f"address to listen on (default 127.0.0.1:{DEFAULT_PORT})")
    p.add_argument("--state", metavar="DIR", default=DEFAULT_STATE_DIR,
                   help=f"the server's certificate and key (default {DEFAULT_STATE_DIR})")
    p.add_argument("--tls-cert", metavar="FILE", help="a certificate (PEM) instead of the "
                   "self-signed one")
    p.add_argument("--tls-key", metavar="FILE", help="its private key (PEM)")
    p.add_argument("--insecure-http", action="store_true",
                   help="plain HTTP, on a loopback address only")
    p.set_defaults(func=cmd_serve, node_action=None)
    nodes = p.add_subparsers(dest="what", metavar="node")
    node = nodes.add_parser("node", help="register, list and remove nodes").add_subparsers(
        dest="node_action", metavar="add|list|remove", required=True
    )
    for action, text in (("add", "register a node and make its token"),
                         ("list", "the registered nodes"),
                         ("remove", "revoke a node's token (its backups stay)")):
        q = node.add_parser(action, help=text)
        q.add_argument("--store", metavar="PATH", help="the datastore directory")
        q.add_argument("--json", action="store_true", help="print one JSON document")
        if action != "list":
            q.add_argument("name", metavar="NAME")
        if action == "add":
            q.add_argument("--admin", action="store_true",
                           help="may read every node's backups and delete them")
            q.add_argument("--token-file", metavar="FILE",
                           help="write the token to FILE (0600) instead of the terminal")
        q.set_defaults(func=cmd_serve)
    p = sub.add_parser(
        "login",
        parents=[common],
        help="remember a repository server: its node token and certificate fingerprint",
        **help_page(
            "Check the server's certificate against the fingerprint 'blockvault serve' printed, "
            f"check the token (typed, or from ${TOKEN_FILE_ENV}), and save both in the "
            "root-only login file, so that --repo URL needs nothing more.",
            "blockvault login https://backup.example:8407 --node web1",
        ),
    )
    p.add_argument("url", metavar="URL")
    p.add_argument("--node", metavar="NAME", default="", help="the node the token is for")
    p.add_argument("--fingerprint", metavar="FP", help="the server certificate's SHA-256")
    p.set_defaults(func=cmd_login)
