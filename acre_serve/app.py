"""create_app: the FastAPI application of one worker process (uvicorn's app factory).

The model loads in the lifespan's startup (uvicorn's worker counts as started only after it), and the
shutdown finishes in-flight questions before the stores close. Errors of every kind leave as
`{"error": {"type", "message"}}` (see errors.py); FastAPI's 422 for a bad body becomes a 400 that names
the field.
"""
from __future__ import annotations

import logging
import os
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from acre_model.errors import AcreError
from acre_store.errors import StoreError

from .config import ServeConfig
from .errors import ApiError, classify, invalid_fields
from .metrics import Metrics
from .middleware import ApiKeyMiddleware, BodyLimitMiddleware, WorkerHeaderMiddleware
from .routes import ask, chat, documents, ops

log = logging.getLogger("acre_serve")

_HTTP_TYPES = {401: "unauthorized", 404: "not_found", 405: "method_not_allowed", 413: "payload_too_large"}


def _json_error(err: ApiError) -> JSONResponse:
    return JSONResponse(err.body(), status_code=err.status)


def _threads_per_worker(workers: int) -> int:
    # N workers on one machine: each gets its share of the cores, not all of them (oversubscription
    # makes every worker slower than one alone).
    return max(1, (os.cpu_count() or 1) // workers)


def create_app(cfg: ServeConfig | None = None) -> FastAPI:
    cfg = cfg or ServeConfig.from_env()
    if not logging.getLogger().handlers:  # a spawned worker: uvicorn set up its own loggers only
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s [%(process)d]: %(message)s")
    metrics = Metrics(cfg.metrics_dir)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        from .worker import Worker

        if cfg.workers > 1:
            import torch

            torch.set_num_threads(_threads_per_worker(cfg.workers))
        app.state.worker = await run_in_threadpool(Worker, cfg, metrics)
        try:
            yield
        finally:
            await run_in_threadpool(app.state.worker.close)
            metrics.close()

    app = FastAPI(title="ACRE", summary="Questions on long documents over a cached, refilled KV",
                  lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.cfg = cfg

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError):
        return _json_error(exc)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        return _json_error(invalid_fields(exc.errors()))

    @app.exception_handler(HTTPException)
    async def _http(request: Request, exc: HTTPException):
        return JSONResponse({"error": {"type": _HTTP_TYPES.get(exc.status_code, "invalid_request"),
                                       "message": str(exc.detail)}}, status_code=exc.status_code,
                            headers=getattr(exc, "headers", None))

    @app.exception_handler(AcreError)
    @app.exception_handler(StoreError)
    async def _engine_or_store(request: Request, exc: Exception):
        return _json_error(classify(exc))

    @app.exception_handler(Exception)
    async def _other(request: Request, exc: Exception):
        return _json_error(classify(exc))  # 500; the traceback goes to the log

    for module in (documents, ask, chat, ops):
        app.include_router(module.router)
    # The last added is the outermost: the key is checked before any body is read.
    app.add_middleware(BodyLimitMiddleware, limit=cfg.max_body_bytes)
    if cfg.api_key:
        app.add_middleware(ApiKeyMiddleware, api_key=cfg.api_key)
    app.add_middleware(WorkerHeaderMiddleware)
    return app
