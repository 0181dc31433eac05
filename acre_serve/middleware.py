"""Two plain ASGI middlewares: the API key check and the request body limit.

Plain ASGI (not Starlette's BaseHTTPMiddleware) so that streamed responses pass through untouched and
a client's disconnect still reaches the route that streams to it.
"""
from __future__ import annotations

import hmac
import os

from starlette.responses import JSONResponse

OPEN_PATHS = frozenset({"/health"})  # liveness probes need no key


def _error(status: int, type_: str, message: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": {"type": type_, "message": message}}, status_code=status, headers=headers)


class ApiKeyMiddleware:
    """Every HTTP request but OPEN_PATHS must carry `Authorization: Bearer KEY` (what the openai client
    sends); the comparison takes the same time whatever the key's first wrong byte."""

    def __init__(self, app, api_key: str):
        self.app = app
        self.key = api_key.encode()

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS:
            return await self.app(scope, receive, send)
        auth = dict(scope["headers"]).get(b"authorization", b"")
        scheme, _, given = auth.partition(b" ")
        if scheme.lower() != b"bearer" or not hmac.compare_digest(given.strip(), self.key):
            message = "missing API key (send Authorization: Bearer KEY)" if not auth else "wrong API key"
            return await _error(401, "unauthorized", message, {"WWW-Authenticate": "Bearer"})(scope, receive, send)
        return await self.app(scope, receive, send)


class BodyLimitMiddleware:
    """Refuses a body over `limit` bytes with 413: at once when Content-Length says so, else as soon as
    the bytes read pass it. The body is read here and replayed to the app (it reads it whole anyway)."""

    def __init__(self, app, limit: int):
        self.app = app
        self.limit = limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        too_large = _error(413, "payload_too_large", f"request body over {self.limit} bytes (--max-body-bytes)")
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.limit:
            return await too_large(scope, receive, send)
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.limit:
                return await too_large(scope, receive, send)
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        replayed = False

        async def replay():
            nonlocal replayed
            if replayed:
                return await receive()  # then the client's disconnect, when it comes
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        return await self.app(scope, replay, send)


class WorkerHeaderMiddleware:
    """Every response says which worker process made it (`X-Acre-Worker: <pid>`): with several workers
    behind one port, that is what ties a log line or a failed stream to its process."""

    def __init__(self, app):
        self.app = app
        self.header = (b"x-acre-worker", str(os.getpid()).encode())

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def send_with_header(message):
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), self.header]}
            await send(message)

        return await self.app(scope, receive, send_with_header)
