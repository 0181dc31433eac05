"""From the scheduler's blocking streams to the event loop, with each question's outcome in the metrics.

The scheduler's stream is a blocking iterator (Delta per token, then Done). A thread of its own reads
it and hands each event to the event loop; the shared thread pool is kept for short blocking calls
(store look-ups), so long answers cannot starve them. A stream whose reader goes away (the client
disconnected) is cancelled at once, which frees its batch slot at the scheduler's next step.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import threading

from starlette.concurrency import run_in_threadpool

from acre_model.scheduler import Done

from .errors import ApiError, classify, outcome
from .schemas import AskIn
from .worker import Worker

_END = object()


async def in_thread(fn, *args):
    """Run a blocking call in a new daemon thread and await its result."""
    fut: concurrent.futures.Future = concurrent.futures.Future()

    def run():
        try:
            fut.set_result(fn(*args))
        except BaseException as e:  # handed to the awaiting coroutine
            fut.set_exception(e)

    threading.Thread(target=run, daemon=True, name="acre-wait").start()
    return await asyncio.wrap_future(fut)


def _failed(worker: Worker, policy: str, exc: BaseException) -> ApiError:
    err = classify(exc)
    worker.metrics.failed(policy, outcome(err))
    worker.refresh_metrics()
    return err


def _answered(worker: Worker, answer) -> None:
    worker.metrics.answered(answer)
    worker.refresh_metrics()


async def submit(worker: Worker, ask: AskIn, question_field: str = "question"):
    """Resolve and check the question (store calls, in the pool), then hand it to the scheduler."""
    try:
        req = await run_in_threadpool(worker.ask_request, ask, question_field)
        return worker.submit(req)
    except Exception as e:
        raise _failed(worker, ask.policy, e) from e


async def answer(worker: Worker, ask: AskIn, question_field: str = "question"):
    """One question, answered whole (an acre_model Answer)."""
    stream = await submit(worker, ask, question_field)
    try:
        a = await in_thread(stream.result)
    except Exception as e:
        raise _failed(worker, ask.policy, e) from e
    _answered(worker, a)
    return a


async def answers(worker: Worker, asks: list[AskIn]) -> list:
    """Many questions submitted together (they share the scheduler's batch), answered in order.
    All or nothing: the first failure cancels the rest and is raised, naming its question."""
    streams = []
    try:
        for i, ask in enumerate(asks):
            streams.append(await submit(worker, ask, f"questions[{i}].question"))

        def collect():
            out = []
            for i, s in enumerate(streams):
                try:
                    out.append(s.result())
                except Exception as e:
                    err = _failed(worker, asks[i].policy, e)
                    raise ApiError(err.status, err.type, f"questions[{i}]: {err.message}") from e
            return out

        out = await in_thread(collect)
    except BaseException:
        for s in streams:
            s.cancel()
        raise
    for a in out:
        _answered(worker, a)
    return out


class LiveStream:
    """A scheduler stream read by a thread of its own; iterate it with `async for` (Delta, then Done).

    `await first()` waits for the first event before any response starts, so that errors of planning
    (an unknown document, a store that went away) still get their own status code. Errors later on are
    raised from the iteration as ApiError. Closing the iteration early cancels the question."""

    def __init__(self, worker: Worker, policy: str, stream):
        self.worker, self.policy, self.stream = worker, policy, stream
        self.loop = asyncio.get_running_loop()
        self.queue: asyncio.Queue = asyncio.Queue()
        self.finished = False
        self._head: list = []
        threading.Thread(target=self._read, daemon=True, name="acre-stream").start()

    def _put(self, item) -> None:
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, item)
        except RuntimeError:  # the event loop is gone (shutdown): nobody is listening
            pass

    def _read(self) -> None:
        try:
            for ev in self.stream:
                self._put(ev)
            self._put(_END)
        except BaseException as e:  # handed to the reader
            self._put(e)

    async def _next(self):
        item = await self.queue.get()
        if item is _END:
            self.finished = True
            raise StopAsyncIteration
        if isinstance(item, BaseException):
            self.finished = True
            raise _failed(self.worker, self.policy, item) from item
        if isinstance(item, Done):
            self.finished = True
            _answered(self.worker, item.answer)
        return item

    async def first(self) -> None:
        try:
            self._head.append(await self._next())
        except StopAsyncIteration:
            pass
        except BaseException:
            self.cancel()
            raise

    def __aiter__(self):
        return self._iterate()

    async def _iterate(self):
        try:
            while self._head:
                yield self._head.pop(0)
            while not self.finished:
                try:
                    yield await self._next()
                except StopAsyncIteration:
                    return
        finally:
            self.cancel()

    def cancel(self) -> None:
        """Free the question's batch slot now (a no-op once it is done)."""
        if not self.finished:
            self.finished = True
            self.stream.cancel()
            self.worker.metrics.failed(self.policy, "cancelled")


async def live(worker: Worker, ask: AskIn, question_field: str = "question") -> LiveStream:
    """Submit a question to stream; returns once its first event (or its error) is there."""
    ls = LiveStream(worker, ask.policy, await submit(worker, ask, question_field))
    await ls.first()
    return ls
