"""Run the repository server: TLS, the datastore, uvicorn, a clean stop on SIGTERM/SIGINT."""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass
from typing import Any

from core.errors import BlockvaultError
from core.repo.s3 import is_s3
from core.server.datastore import Datastore
from core.tls import ensure_self_signed, fingerprint_of_pem_file, is_loopback

log = logging.getLogger("blockvault.server")
DEFAULT_PORT = 8407
DEFAULT_STATE_DIR = "/var/lib/blockvault-server"


class ServeError(BlockvaultError):
    """The server cannot start as asked (bad address, plain HTTP off loopback, no certificate)."""


@dataclass(frozen=True)
class ServeOptions:
    """How ``blockvault serve`` was asked to run."""

    store: str
    listen: str = f"127.0.0.1:{DEFAULT_PORT}"
    state_dir: str = DEFAULT_STATE_DIR
    tls_cert: str | None = None
    tls_key: str | None = None
    insecure_http: bool = False


def parse_listen(listen: str) -> tuple[str, int]:
    """Return ``(host, port)`` of ``HOST:PORT`` (``[v6]:PORT`` for IPv6)."""
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ServeError(f"--listen {listen!r} is not HOST:PORT (e.g. 0.0.0.0:{DEFAULT_PORT})")
    return host.strip("[]") or "0.0.0.0", int(port)


def _server_class() -> type:
    import uvicorn

    class Server(uvicorn.Server):
        async def shutdown(self, sockets: list[Any] | None = None) -> None:
            # An idle keep-alive connection over TLS is closed with a close_notify that
            # a client idle in its pool never answers: asyncio would wait 30 s for it.
            # Requests in flight still finish; idle connections are cut at once.
            for connection in list(self.server_state.connections):
                connection.shutdown()
                transport = getattr(connection, "transport", None)
                if transport is not None and transport.is_closing():
                    transport.abort()
            await super().shutdown(sockets)

    return Server


def serve(options: ServeOptions) -> int:
    """Serve ``options.store`` until SIGTERM or SIGINT; return 0 after a clean stop."""
    import uvicorn

    from core.server.app import build_app

    server_class = _server_class()

    host, port = parse_listen(options.listen)
    cert: str | None = None
    key: str | None = None
    if options.insecure_http:
        if not is_loopback(host):
            raise ServeError(
                f"--insecure-http is allowed on a loopback address only, not {host}: tokens "
                "and backups would cross the network in the clear"
            )
        scheme, fingerprint = "http", None
    else:
        if bool(options.tls_cert) != bool(options.tls_key):
            raise ServeError("--tls-cert and --tls-key go together")
        if options.tls_cert and options.tls_key:
            cert, key = options.tls_cert, options.tls_key
        else:
            cert, key, made = ensure_self_signed(options.state_dir, [host])
            if made:
                print(f"made a self-signed certificate {cert}", file=sys.stderr, flush=True)
        scheme, fingerprint = "https", fingerprint_of_pem_file(cert)
    if is_s3(options.store):
        datastore = Datastore(options.store)
        datastore.meta.names("server")  # the bucket answers, or the start fails in one line
    else:
        os.makedirs(options.store, mode=0o700, exist_ok=True)
        datastore = Datastore(options.store)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    config = uvicorn.Config(
        # uvloop's TLS and httptools' parser: a third less of the server's CPU per GiB
        # than asyncio's and h11's (bench/server.py).
        build_app(datastore), host=host, port=port, loop="uvloop", http="httptools",
        log_level="warning", access_log=False,
        timeout_keep_alive=30, limit_concurrency=256, server_header=False,
        timeout_graceful_shutdown=30,
        ssl_certfile=cert, ssl_keyfile=key,
    )
    server = server_class(config)
    print(f"blockvault server: {scheme}://{host}:{port} serving {datastore.root}",
          file=sys.stderr, flush=True)
    if fingerprint:
        # On stdout, alone: what clients pin (BLOCKVAULT_FINGERPRINT, blockvault login).
        print(f"fingerprint {fingerprint}", flush=True)
    try:
        server.run()
    finally:
        datastore.close()
    return 0 if server.started else 12
