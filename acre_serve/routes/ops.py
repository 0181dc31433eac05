"""Operations: `GET /health` (liveness, model, store reachability) and `GET /metrics` (Prometheus)."""
from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from ..metrics import CONTENT_TYPE
from . import worker_of

router = APIRouter()


@router.get("/health")
async def health(request: Request):
    """200 with {"status": "ok", ...}; 503 when the store cannot be reached (the worker stays up)."""
    h = await run_in_threadpool(worker_of(request).health)
    return JSONResponse(h, status_code=200 if h["store"] == "ok" else 503)


@router.get("/metrics")
async def metrics(request: Request):
    w = worker_of(request)
    w.refresh_metrics()
    return Response(w.metrics.render(), media_type=CONTENT_TYPE)
