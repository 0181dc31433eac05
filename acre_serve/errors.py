"""Errors on the wire: every failure is `{"error": {"type": ..., "message": ...}}` with its status code.

`ApiError` is raised by the HTTP layer itself (a bad field, a body too large, a missing key);
`classify` maps what the engine and the store raise to a status:

| raised | status | type |
|---|---|---|
| the scheduler is closed (the worker is shutting down) | 503 | shutting_down |
| acre_model InputError, store InvalidArgument | 400 | invalid_request |
| UnknownDocument, store DocumentNotFound | 404 | not_found |
| other DocumentError, store LayoutMismatch (another model's document) | 409 | conflict |
| StoreUnavailable (daemon gone, deadline passed) | 503 | store_unavailable |
| another acre_model error (the worker's set-up, e.g. a model without calibration) | 500 | server_error |
| anything else | 500 | internal (traceback in the server log) |
"""
from __future__ import annotations

import logging

from acre_model.errors import AcreError, DocumentError, InputError, UnknownDocument
from acre_model.scheduler import SchedulerClosed
from acre_store.errors import DocumentNotFound, InvalidArgument, LayoutMismatch, StoreUnavailable

log = logging.getLogger("acre_serve")


class ApiError(Exception):
    def __init__(self, status: int, type_: str, message: str):
        super().__init__(message)
        self.status, self.type, self.message = status, type_, message

    def body(self) -> dict:
        return {"error": {"type": self.type, "message": self.message}}


def bad_request(field: str, message: str) -> ApiError:
    """A 400 whose message starts with the offending field."""
    return ApiError(400, "invalid_request", f"{field}: {message}")


_CLASSES: tuple[tuple[tuple[type[BaseException], ...], int, str], ...] = (
    ((UnknownDocument, DocumentNotFound), 404, "not_found"),
    ((SchedulerClosed,), 503, "shutting_down"),
    ((InputError, InvalidArgument), 400, "invalid_request"),
    ((DocumentError, LayoutMismatch), 409, "conflict"),
    ((StoreUnavailable,), 503, "store_unavailable"),
    ((AcreError,), 500, "server_error"),  # the worker's own set-up (e.g. a model without calibration)
)


def classify(exc: BaseException) -> ApiError:
    """The ApiError for any exception (logging the traceback of the unexpected ones)."""
    if isinstance(exc, ApiError):
        return exc
    for classes, status, type_ in _CLASSES:
        if isinstance(exc, classes):
            return ApiError(status, type_, str(exc))
    log.error("internal error: %r", exc, exc_info=exc)
    return ApiError(500, "internal", f"internal error: {type(exc).__name__}: {exc}")


def outcome(err: ApiError) -> str:
    """The `outcome` label of acre_questions_total for a failed question."""
    return {400: "bad_request", 404: "not_found", 409: "conflict", 503: "unavailable"}.get(err.status, "error")


def field_path(loc) -> str:
    """('questions', 3, 'max_new_tokens') -> 'questions[3].max_new_tokens'."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "body"


def _reason(err: dict) -> str:
    kind = err.get("type", "")
    if kind == "missing":
        return "required"
    if kind == "extra_forbidden":
        return "unknown field"
    if kind == "json_invalid":
        return f"malformed JSON ({err.get('ctx', {}).get('error', 'cannot parse')})"
    msg = str(err.get("msg", "invalid"))
    return msg.removeprefix("Value error, ")


def invalid_fields(errors, prefix: tuple = ()) -> ApiError:
    """A 400 naming every offending field of a pydantic error list (locations relative to `prefix`)."""
    parts = []
    for err in errors:
        loc = tuple(err.get("loc", ()))
        if err.get("type") == "json_invalid":
            loc = ()  # FastAPI puts the character offset there
        elif loc[:1] == ("body",):  # FastAPI's location of the request body
            loc = loc[1:]
        parts.append(f"{field_path(prefix + loc)}: {_reason(err)}")
    return ApiError(400, "invalid_request", "; ".join(dict.fromkeys(parts)) or "invalid request")
