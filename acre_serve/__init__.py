"""acre_serve: the serving process (`acre serve`): model workers behind an HTTP API.

    acre serve --store unix:///tmp/acre.sock --workers 2 --api-key KEY

`create_app()` builds one worker's FastAPI app (uvicorn's app factory); `serve(ServeConfig(...))` runs the
whole process (a daemon of its own when no store is given, N workers, graceful shutdown).
The routes delegate to `Worker` (the engine, its store, the batching scheduler, metrics); docs/serving.md
is the API reference.
"""
from __future__ import annotations

__all__ = ["ServeConfig", "create_app", "serve"]


def __getattr__(name):
    if name == "ServeConfig":
        from .config import ServeConfig
        return ServeConfig
    if name == "create_app":
        from .app import create_app
        return create_app
    if name == "serve":
        from .server import serve
        return serve
    raise AttributeError(name)
