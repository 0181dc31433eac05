"""`POST /v1/chat/completions`, OpenAI-compatible: the document is named in the `acre` extension field.

The last user message is the question. `usage.prompt_tokens` counts what the answer attended to:
the question's tokens (with the chat template's and the answer prefix's) plus the active document
entries (`acre.n_active`), not the whole document. `finish_reason` is the answer's own: "stop" when a
stop token or stop string ended it, "length" when it used all of `max_tokens`. The answer's statistics ride along in an `acre` field (in the last
chunk when streaming).
"""
from __future__ import annotations

import time
import uuid

from fastapi import APIRouter, Request

from acre_model.scheduler import Done

from .. import bridge
from ..schemas import ChatIn
from ..sse import EventStreamResponse, TrimmedDeltas, event, framed
from . import worker_of

router = APIRouter()


def _usage(n_question: int, answer) -> dict:
    prompt = n_question + answer.n_active
    return {"prompt_tokens": prompt, "completion_tokens": answer.n_new_tokens,
            "total_tokens": prompt + answer.n_new_tokens}


@router.post("/v1/chat/completions")
async def chat_completions(body: ChatIn, request: Request):
    w = worker_of(request)
    ask = body.ask()
    model = body.model or w.model_name
    head = {"id": f"chatcmpl-{uuid.uuid4().hex}", "created": int(time.time()), "model": model}
    if not body.stream:
        a = await bridge.answer(w, ask, "messages")
        n_question = w.question_tokens(ask.question, ask.answer_prefix)
        return {**head, "object": "chat.completion",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": a.answer},
                             "logprobs": None, "finish_reason": a.finish_reason}],
                "usage": _usage(n_question, a), "acre": a.to_dict()}

    live = await bridge.live(w, ask, "messages")
    n_question = w.question_tokens(ask.question, ask.answer_prefix)
    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    trim = TrimmedDeltas()
    done: list = []

    def chunk(delta: dict, finish_reason: str | None = None, **extra) -> dict:
        return {**head, "object": "chat.completion.chunk",
                "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}], **extra}

    def on_event(ev):
        if isinstance(ev, Done):
            done.append(ev.answer)
            return [chunk({}, ev.answer.finish_reason, acre=ev.answer.to_dict())]
        text = trim(ev.text)
        return [chunk({"content": text})] if text else []

    def on_done():
        if include_usage and done:
            yield {**head, "object": "chat.completion.chunk", "choices": [], "usage": _usage(n_question, done[0])}

    async def events():
        yield event(chunk({"role": "assistant", "content": ""}))
        async for text in framed(live, on_event, on_done):
            yield text
    return EventStreamResponse(events(), live)
