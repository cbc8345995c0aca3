"""The repository server's HTTP API (starlette), over a :class:`~core.server.datastore.Datastore`.

Every request but ``GET /v1/ping`` carries ``Authorization: Bearer TOKEN``. Objects
travel as raw bytes; errors are ``{"error": "one line", "return_code": 12}`` and every
refused request is logged with the node and the reason.

- ``GET /v1/whoami``: the node, whether it is an admin, whether a repository exists
- ``GET|PUT /v1/config``: the repository config (PUT with ``If-None-Match: *`` makes
  it; with ``If-Match: SHA256`` changes the key slots)
- ``GET /v1/known``: the node's known chunks that are stored (32-byte digests)
- ``GET /v1/list/KIND``: names the node may see, as JSON
- ``GET|HEAD|DELETE /v1/objects/KIND/NAME``: read one object (delete: admin only)
- ``POST /v1/sessions``: begin a session; ``PUT /v1/sessions/SID/chunks/ID``: upload
  a chunk; ``PUT /v1/sessions/SID/packs/NAME``: a pack of small chunks (each piece
  verified; a packed chunk is then read as ``/v1/objects/chunks/ID``);
  ``POST /v1/sessions/SID/commit/KIND/NAME``: the manifest (and, for a
  sealed one, the digests it names after ``X-Manifest-Length`` bytes) ends it;
  ``DELETE /v1/sessions/SID`` abandons it
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from core.errors import BlockvaultError
from core.repo.format import MAX_MANIFEST
from core.repo.packs import MAX_PACK
from core.repo.store import check_key
from core.server.datastore import Datastore, Refused, Session
from core.server.nodes import Node

log = logging.getLogger("blockvault.server")
API_VERSION = 1
MAX_SMALL_BODY = 1 << 20
_Handler = Callable[[Request, Node], Awaitable[Response]]


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message, "return_code": 12}, status_code=status)


async def _body(request: Request, limit: int) -> bytes:
    """Return the request body, refusing it (413) past ``limit`` bytes before reading more."""
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > limit):
        raise Refused(413, f"the request body is larger than the limit of {limit} bytes")
    parts, size = [], 0
    async for part in request.stream():
        size += len(part)
        if size > limit:
            raise Refused(413, f"the request body is larger than the limit of {limit} bytes")
        parts.append(part)
    return b"".join(parts)


def build_app(datastore: Datastore) -> Starlette:
    """Return the ASGI application serving ``datastore``."""

    def authenticated(handler: _Handler) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            node: Node | None = None
            try:
                node = _authenticate(request)
                return await handler(request, node)
            except Refused as e:
                who = node.name if node else "-"
                log.warning("refused %s %s for node %s: %d %s", request.method,
                            request.url.path, who, e.status, e)
                return _error(e.status, str(e))
            except ValueError as e:  # a malformed key or number
                return _error(400, str(e))
            except ClientDisconnect:
                return Response(status_code=400)
            except BlockvaultError as e:
                log.error("failed %s %s for node %s: %s", request.method, request.url.path,
                          node.name if node else "-", e)
                return _error(500, str(e))

        return endpoint

    def _authenticate(request: Request) -> Node:
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise Refused(401, "the server needs a node token (Authorization: Bearer)")
        node = datastore.registry.authenticate(token.strip())
        if node is None:
            raise Refused(401, "the server does not know this token: it was mistyped or "
                          "never issued; ask for a new one ('blockvault serve node add')")
        if node.revoked:
            raise Refused(401, f"node {node.name} was removed from the server on "
                          f"{node.revoked}: its token is revoked")
        return node

    async def ping(request: Request) -> Response:
        return JSONResponse({"blockvault": API_VERSION})

    async def whoami(request: Request, node: Node) -> Response:
        try:
            await run_in_threadpool(datastore.config_bytes)
            has_repo = True
        except Refused:
            has_repo = False
        return JSONResponse({"node": node.name, "admin": node.admin, "repository": has_repo,
                             "api": API_VERSION})

    async def config(request: Request, node: Node) -> Response:
        if request.method == "GET":
            data = await run_in_threadpool(datastore.config_bytes)
            return Response(data, media_type="application/json")
        data = await _body(request, MAX_SMALL_BODY)
        if request.headers.get("if-none-match") == "*":
            await run_in_threadpool(datastore.create_config, node, data)
        elif (expected := request.headers.get("if-match")) is not None:
            await run_in_threadpool(datastore.replace_slots, node, data, expected)
        else:
            raise Refused(428, "PUT /v1/config needs If-None-Match: * or If-Match")
        return JSONResponse({"stored": True}, status_code=201)

    async def known(request: Request, node: Node) -> Response:
        data = await run_in_threadpool(datastore.known_stored, node.name)
        return Response(data, media_type="application/octet-stream")

    async def listing(request: Request, node: Node) -> Response:
        names = await run_in_threadpool(datastore.listing, node, request.path_params["kind"])
        return JSONResponse(names)

    async def objects(request: Request, node: Node) -> Response:
        key = f"{request.path_params['kind']}/{request.path_params['name']}"
        check_key(key)
        if request.method == "DELETE":
            await run_in_threadpool(datastore.delete, node, key)
            return JSONResponse({"deleted": key})
        await run_in_threadpool(datastore.may_read, node, key)
        data = await run_in_threadpool(datastore.get, key)
        if request.method == "HEAD":
            return Response(headers={"content-length": str(len(data))})
        return Response(data, media_type="application/octet-stream")

    async def opened(node: Node, sid: str) -> Session:
        """The session ``sid``: at once when open here, else resumed in a worker thread."""
        session = datastore.live_session(node, sid)
        if session is None:
            session = await run_in_threadpool(datastore.session, node, sid)
        return session

    async def begin(request: Request, node: Node) -> Response:
        await run_in_threadpool(datastore.config_bytes)
        session = await run_in_threadpool(datastore.begin, node)
        log.info("node %s began session %s", node.name, session.id[:8])
        return JSONResponse({"session": session.id}, status_code=201)

    async def chunk(request: Request, node: Node) -> Response:
        session = await opened(node, request.path_params["sid"])
        body = await _body(request, datastore.max_chunk())
        await run_in_threadpool(datastore.upload_chunk, session, request.path_params["name"],
                                body)
        return JSONResponse({"stored": True})

    async def pack(request: Request, node: Node) -> Response:
        session = await opened(node, request.path_params["sid"])
        body = await _body(request, MAX_PACK)
        await run_in_threadpool(datastore.upload_pack, session, request.path_params["name"],
                                body)
        return JSONResponse({"stored": True})

    async def commit(request: Request, node: Node) -> Response:
        session = await opened(node, request.path_params["sid"])
        key = f"{request.path_params['kind']}/{request.path_params['name']}"
        body = await _body(request, MAX_MANIFEST + (64 << 20))
        declared = request.headers.get("x-manifest-length", str(len(body)))
        if not declared.isdigit() or int(declared) > len(body):
            raise Refused(400, "X-Manifest-Length is not a length within the body")
        n = int(declared)
        made = await run_in_threadpool(datastore.commit, node, session, key, body[:n], body[n:])
        return JSONResponse({"committed": key}, status_code=201 if made else 200)

    async def abandon(request: Request, node: Node) -> Response:
        session = await opened(node, request.path_params["sid"])
        await run_in_threadpool(datastore.end, session)
        log.info("node %s abandoned session %s", node.name, session.id[:8])
        return JSONResponse({"abandoned": True})

    routes: list[Any] = [
        Route("/v1/ping", ping),
        Route("/v1/whoami", authenticated(whoami)),
        Route("/v1/config", authenticated(config), methods=["GET", "PUT"]),
        Route("/v1/known", authenticated(known)),
        Route("/v1/list/{kind}", authenticated(listing)),
        Route("/v1/objects/{kind}/{name}", authenticated(objects),
              methods=["GET", "HEAD", "DELETE"]),
        Route("/v1/sessions", authenticated(begin), methods=["POST"]),
        Route("/v1/sessions/{sid}/chunks/{name}", authenticated(chunk), methods=["PUT"]),
        Route("/v1/sessions/{sid}/packs/{name}", authenticated(pack), methods=["PUT"]),
        Route("/v1/sessions/{sid}/commit/{kind}/{name}", authenticated(commit),
              methods=["POST"]),
        Route("/v1/sessions/{sid}", authenticated(abandon), methods=["DELETE"]),
    ]
    return Starlette(routes=routes)
