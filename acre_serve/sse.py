"""Server-sent events: one `data: <json>` event per message, `data: [DONE]` at the end (OpenAI's framing)."""
from __future__ import annotations

import json
from typing import AsyncIterator

from starlette.responses import StreamingResponse

from .errors import ApiError
from .bridge import LiveStream

DONE = "data: [DONE]\n\n"


def event(obj) -> str:
    return f"data: {json.dumps(obj, separators=(',', ':'))}\n\n"


class EventStreamResponse(StreamingResponse):
    """The events of one live question. However the response ends (done, client gone before or during
    the stream, server shutting down), the question is cancelled if it is still running."""

    media_type = "text/event-stream"

    def __init__(self, events: AsyncIterator[str], live: LiveStream):
        # no-cache and no proxy buffering: each event must reach the client when it is made
        super().__init__(events, headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        self.live = live

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.live.cancel()  # a no-op once the answer is done


async def framed(live: LiveStream, on_event, on_done=None) -> AsyncIterator[str]:
    """The SSE text of a live stream: `on_event(ev)` -> the objects to send for each event; an error
    after the response started becomes an `{"error": ...}` event; then [DONE]."""
    try:
        async for ev in live:
            for obj in on_event(ev):
                yield event(obj)
        for obj in (on_done() if on_done else ()):
            yield event(obj)
    except ApiError as e:
        yield event(e.body())
    yield DONE


class TrimmedDeltas:
    """Token text deltas whose concatenation equals the stripped answer (Answer.answer is stripped):
    leading whitespace is dropped, trailing whitespace is held back until more text follows."""

    def __init__(self):
        self.started = False
        self.held = ""

    def __call__(self, text: str) -> str:
        if not self.started:
            text = text.lstrip()
            if not text:
                return ""
            self.started = True
        body = text.rstrip()
        out = self.held + body if body else ""
        self.held = (self.held if not body else "") + text[len(body):]
        return out
