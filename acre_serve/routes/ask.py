"""Questions: `POST /v1/ask` (an Answer, or server-sent events) and `POST /v1/ask/batch`."""
from __future__ import annotations

from fastapi import APIRouter, Request

from acre_model.scheduler import Done

from .. import bridge
from ..schemas import AskBatchIn, AskIn
from ..sse import EventStreamResponse, TrimmedDeltas, framed
from . import worker_of

router = APIRouter()


def _ask_events():
    """Events of /v1/ask: `{"delta": text}` per token (their concatenation is the answer's text),
    then `{"answer": Answer}`."""
    trim = TrimmedDeltas()

    def on_event(ev):
        if isinstance(ev, Done):
            return [{"answer": ev.answer.to_dict()}]
        text = trim(ev.text)
        return [{"delta": text}] if text else []
    return on_event


@router.post("/v1/ask")
async def ask(body: AskIn, request: Request):
    w = worker_of(request)
    if not body.stream:
        return (await bridge.answer(w, body)).to_dict()
    live = await bridge.live(w, body)
    return EventStreamResponse(framed(live, _ask_events()), live)


@router.post("/v1/ask/batch")
async def ask_batch(body: AskBatchIn, request: Request) -> dict:
    answers = await bridge.answers(worker_of(request), body.asks())
    return {"answers": [a.to_dict() for a in answers]}
