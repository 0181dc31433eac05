"""Who may talk to the daemon: TLS credentials and a bearer token, checked in one server interceptor.

The trust model (docs/store.md, "Security"): processes of the daemon's own user are trusted — they can
open its unix sockets and shared-memory files (owner-only modes) and could read its data directory
anyway. Everyone else reaches it only over TCP, where the daemon wants TLS (`--tls-cert/--tls-key`,
optionally `--tls-client-ca` for mutual TLS) and/or a bearer token (`--token-file` or
`ACRE_STORE_TOKEN`); a plain TCP listener needs an explicit `--insecure`.

When a token is set, every call on every listener (unix sockets included) must carry
`authorization: Bearer <token>`; the only exception is grpc.health.v1, so that probes need no secret
(it tells nothing but SERVING/NOT_SERVING). The same-host data plane asks for the same token in its
handshake (dataplane.py). Tokens are compared with `hmac.compare_digest` (constant time).
"""
from __future__ import annotations

import hashlib
import hmac
import os

import grpc

TOKEN_ENV = "ACRE_STORE_TOKEN"
TLS_CA_ENV = "ACRE_STORE_TLS_CA"
HEALTH_PREFIX = "/grpc.health.v1.Health/"


def read_token(token_file: str | None = None) -> str | None:
    """The token from `token_file` (first line, stripped), else `$ACRE_STORE_TOKEN`, else None."""
    if token_file:
        with open(token_file, encoding="utf-8") as f:
            token = f.readline().strip()
        if not token:
            raise ValueError(f"token file {token_file} is empty")
        return token
    return os.environ.get(TOKEN_ENV) or None


def token_ok(expected: str, presented: str | bytes | None) -> bool:
    """Constant-time comparison of a presented token with the expected one."""
    if presented is None:
        return False
    if isinstance(presented, str):
        presented = presented.encode()
    # Digests first: compare_digest takes time that depends on the lengths, so not even the token's length leaks.
    return hmac.compare_digest(hashlib.sha256(expected.encode()).digest(), hashlib.sha256(presented).digest())


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


# -- server side ----------------------------------------------------------------------------------

def server_credentials(cert: str, key: str, client_ca: str | None = None) -> grpc.ServerCredentials:
    """TLS with the daemon's certificate chain and key; with `client_ca`, clients must present a
    certificate signed by it (mutual TLS)."""
    return grpc.ssl_server_credentials([(_read(key), _read(cert))],
                                       root_certificates=_read(client_ca) if client_ca else None,
                                       require_client_auth=client_ca is not None)


def _deny(handler: grpc.RpcMethodHandler, details: str) -> grpc.RpcMethodHandler:
    """A handler of the same kind as `handler` that ends the call UNAUTHENTICATED (and reads nothing)."""
    def abort(_request, context):
        context.abort(grpc.StatusCode.UNAUTHENTICATED, details)

    kinds = {(False, False): grpc.unary_unary_rpc_method_handler,
             (False, True): grpc.unary_stream_rpc_method_handler,
             (True, False): grpc.stream_unary_rpc_method_handler,
             (True, True): grpc.stream_stream_rpc_method_handler}
    make = kinds[(handler.request_streaming, handler.response_streaming)]
    return make(abort, request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer)


class TokenInterceptor(grpc.ServerInterceptor):
    """Refuses (UNAUTHENTICATED) every call but health checks whose `authorization` metadata is not
    `Bearer <token>`; the method's handler never runs, so no data goes out."""

    def __init__(self, token: str):
        self._token = token

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        if handler is None or handler_call_details.method.startswith(HEALTH_PREFIX):
            return handler
        presented = None
        for k, v in handler_call_details.invocation_metadata or ():
            if k == "authorization":
                presented = v
        if presented is None:
            return _deny(handler, "this store daemon requires a token (--token-file or $ACRE_STORE_TOKEN)")
        if not (presented.startswith("Bearer ") and token_ok(self._token, presented[len("Bearer "):])):
            return _deny(handler, "wrong token for this store daemon")
        return handler


# -- client side ----------------------------------------------------------------------------------

class _BearerToken(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor,
                   grpc.StreamUnaryClientInterceptor, grpc.StreamStreamClientInterceptor):
    """Adds `authorization: Bearer <token>` to every call of a channel (works on plain channels too,
    unlike call credentials, so unix-socket clients carry it the same way)."""

    def __init__(self, token: str):
        self._md = ("authorization", f"Bearer {token}")

    def _details(self, d):
        return d._replace(metadata=list(d.metadata or ()) + [self._md])  # grpc's details are a namedtuple

    def intercept_unary_unary(self, continuation, d, request):
        return continuation(self._details(d), request)

    def intercept_unary_stream(self, continuation, d, request):
        return continuation(self._details(d), request)

    def intercept_stream_unary(self, continuation, d, request_iterator):
        return continuation(self._details(d), request_iterator)

    def intercept_stream_stream(self, continuation, d, request_iterator):
        return continuation(self._details(d), request_iterator)


def client_channel(target: str, options: list, tls_ca: str | None = None, token: str | None = None,
                   tls_cert: str | None = None, tls_key: str | None = None) -> tuple[grpc.Channel, grpc.Channel]:
    """(the channel to make calls on, the underlying channel for readiness and close). TLS when `tls_ca`
    is given (the CA that signed the daemon's certificate; with `tls_cert/tls_key`, the client's own
    certificate for mutual TLS); the token on every call when `token` is given."""
    if tls_ca:
        creds = grpc.ssl_channel_credentials(root_certificates=_read(tls_ca),
                                             private_key=_read(tls_key) if tls_key else None,
                                             certificate_chain=_read(tls_cert) if tls_cert else None)
        raw = grpc.secure_channel(target, creds, options=options)
    else:
        raw = grpc.insecure_channel(target, options=options)
    if not token:
        return raw, raw
    return grpc.intercept_channel(raw, _BearerToken(token)), raw
