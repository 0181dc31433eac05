"""Store exceptions, one per gRPC status code, shared by the embedded store, the daemon and the client.

The servicer maps each class to its status code and the client maps the code back, so engine code
catches the same exception whether the store is in-process or behind a socket.
"""
from __future__ import annotations

import grpc


class StoreError(Exception):
    """Base of every store error; `code` is the gRPC status it travels as."""

    code = grpc.StatusCode.INTERNAL


class DocumentNotFound(StoreError, KeyError):
    code = grpc.StatusCode.NOT_FOUND

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else "document not found"


class InvalidArgument(StoreError, ValueError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class LayoutMismatch(StoreError):
    """The document's layout, dtype or model fingerprint does not match what the caller expects."""

    code = grpc.StatusCode.FAILED_PRECONDITION


class ResourceExhausted(StoreError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class DataLoss(StoreError):
    """Stored bytes failed their checksum: the store refuses to return them."""

    code = grpc.StatusCode.DATA_LOSS


class StoreUnavailable(StoreError):
    """The daemon cannot be reached (the message names the address), or the store is in use."""

    code = grpc.StatusCode.UNAVAILABLE


class Unauthenticated(StoreError):
    """The daemon wants a token (or another one) from this client (auth.py)."""

    code = grpc.StatusCode.UNAUTHENTICATED


_BY_CODE = {
    cls.code: cls
    for cls in (DocumentNotFound, InvalidArgument, LayoutMismatch, ResourceExhausted, DataLoss, StoreUnavailable,
                Unauthenticated)
}


def error_for_code(code: grpc.StatusCode, message: str) -> StoreError:
    """The exception a client raises for a failed call with this status."""
    return _BY_CODE.get(code, StoreError)(message)
