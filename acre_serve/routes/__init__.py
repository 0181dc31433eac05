"""The HTTP routes, one file per group; each takes the process's Worker from `request.app.state`."""
from __future__ import annotations

from fastapi import Request

from ..worker import Worker


def worker_of(request: Request) -> Worker:
    return request.app.state.worker
