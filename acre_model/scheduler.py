"""`Scheduler`: many questions at once on one engine, with continuous batching.

Questions are submitted from any thread. Planning threads run each new question's steps 1-5
(`Engine.plan_question`: L1, pass 1, the plan, the layout; its refill starts in the background), all but
the model's forwards. The decoding thread owns those, each batched over the questions that wait for it;
in every turn of its loop it runs
  1. pass 1 of every question whose planner waits for it, as one forward (`pass1.run_jobs`: each question
     over its own L1 attend set, up to the last probed layer); the planners go on with the locator,
  2. pass 2 of every question planned since the last turn, as one forward (`Engine.run_pass2`, each
     question over its own active cache); those questions join the running batch,
  3. one decoding step of every question in flight, as one forward (`LlamaModel.decode_batch`: one row
     per question, each over its own cache).
A question asked with `reselect=N` whose answer has reached a multiple of N tokens leaves the batch
before step 3 to re-select (`Engine.reselect_plan` in a re-selection thread: its pass 1 joins the
planners' in 1, its grown cache's refill starts) and comes back with its rebuilt cache (its pass 2 in a
batch of its own in the next turn, then `Engine.reselect_join`); the other questions go on decoding.
A finished or cancelled question leaves the batch at once: the batch is re-formed every step, as serving
engines do. One thread for every forward also keeps the CPU's cores to one batched forward at a time (on
a small CPU, forwards of several threads at once slow each other down more than they overlap).

Each question decodes through a `Sequence`, as `Engine.ask` does, and a row's numbers do not depend on
the other rows of its batch (in pass 1, pass 2 and decoding), so an answer equals the same question
asked alone (greedy, token for token).
"""
from __future__ import annotations

import logging
import queue
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Iterator

from .engine import check_reselect, check_reselect_policy, reselect_due
from .errors import AcreError, InputError
from .generation import SamplingParams
from .pass1 import Pass1Job, run_jobs
from .results import Answer
from .sequence import Sequence

log = logging.getLogger(__name__)


@dataclass
class AskRequest:
    doc_id: str | list[str]  # a list: one question over several documents
    question: str
    policy: str = "acre"
    answer_prefix: str = ""
    max_new_tokens: int = 64
    knobs: dict = field(default_factory=dict)  # the policy's own knobs
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None  # sampling seed (a policy's own `seed` knob goes in `knobs`)
    stop: list[str] = field(default_factory=list)
    store: object = None  # a store object or address; None: the engine's default store
    reselect: int = 0  # re-selection every N answer tokens (chunk policies; `Engine.ask`); 0: off


@dataclass
class Delta:
    text: str  # text the latest token added (may be empty while a character is incomplete)


@dataclass
class Done:
    answer: Answer


_END = object()


class AskStream:
    """The handle of one submitted question: iterate it for `Delta`s then one `Done`, or call `result()`."""

    def __init__(self, request: AskRequest, sampling: SamplingParams):
        self.request = request
        self.sampling = sampling
        self.submitted = time.perf_counter()
        self._events: queue.Queue = queue.Queue()
        self._cancelled = threading.Event()
        self.answer: Answer | None = None
        self.error: BaseException | None = None

    def cancel(self) -> None:
        """Stop this question: it leaves the batch at the next step (or is never planned)."""
        self._cancelled.set()

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    def __iter__(self) -> Iterator[Delta | Done]:
        while True:
            ev = self._events.get()
            if ev is _END:
                self._events.put(_END)  # stays the last event for any later reader
                if self.error is not None:
                    raise self.error
                return
            yield ev

    def result(self, timeout: float | None = None) -> Answer:
        """Block until the answer is complete; raises the question's error."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                ev = self._events.get(timeout=left)
            except queue.Empty:
                raise TimeoutError(f"no answer within {timeout} s") from None
            if ev is _END:
                self._events.put(_END)
                if self.error is not None:
                    raise self.error
                if self.answer is None:
                    raise Cancelled("the question was cancelled")
                return self.answer

    # called by the scheduler's threads
    def _emit(self, ev) -> None:
        if isinstance(ev, Done):
            self.answer = ev.answer
        self._events.put(ev)

    def _fail(self, e: BaseException) -> None:
        self.error = e
        self._events.put(_END)

    def _end(self) -> None:
        self._events.put(_END)


class SchedulerClosed(AcreError):
    """The scheduler is shutting down and takes no new questions."""


class Cancelled(AcreError):
    """The question was cancelled before its answer was complete."""


class Scheduler:
    def __init__(self, engine, max_batch: int = 16, listener=None, planners: int | None = None):
        """`planners`: planning threads (default min(8, max_batch)); they wait for pass 1 most of the time,
        and as many questions as wait together share one pass 1 forward."""
        if max_batch < 1:
            raise ValueError("max_batch must be >= 1")
        planners = min(8, max_batch) if planners is None else planners
        if planners < 1:
            raise ValueError("planners must be >= 1")
        self.engine = engine
        self.max_batch = max_batch
        self.listener = listener  # optional: on_step(batch_size, queue_depth), on_done(answer), on_error(exc)
        self._pending: queue.Queue[AskStream | None] = queue.Queue()
        self._ready: queue.Queue = queue.Queue()  # (stream, Planned), or None when a planner stops
        self._pass1: queue.Queue[tuple[Pass1Job, Future]] = queue.Queue()  # planners' pass 1 forwards
        self._slots = threading.Semaphore(max_batch)  # questions planned or decoding
        self._wake = threading.Event()
        self._closing = threading.Event()
        self._active: list[tuple[AskStream, Sequence]] = []
        # re-selection: questions out of the batch while they re-select, and what their threads found
        self._parked = 0  # touched by the decoding thread only
        self._rejoin: queue.Queue = queue.Queue()  # (stream, seq, (planned, new chunks) | None | error)
        self._reselector = ThreadPoolExecutor(max_workers=planners, thread_name_prefix="acre-reselect")
        # More than one planner: a question stuck on a slow store (retries while a daemon restarts) does
        # not hold up the planning of the others.
        self._planners = [threading.Thread(target=self._plan_loop, name=f"acre-plan-{i}", daemon=True)
                          for i in range(planners)]
        self._decoder = threading.Thread(target=self._decode_loop, name="acre-decode", daemon=True)
        for t in self._planners:
            t.start()
        self._decoder.start()

    @property
    def queue_depth(self) -> int:
        """Questions waiting to be planned."""
        return self._pending.qsize()

    @property
    def batch_size(self) -> int:
        """Questions decoding now."""
        return len(self._active)

    def submit(self, request: AskRequest) -> AskStream:
        """Queue a question; cheap checks (sampling values, empty question) raise InputError at once."""
        if self._closing.is_set():
            raise SchedulerClosed("the server is shutting down")
        if not request.question or not request.question.strip():
            raise InputError("question: empty question")
        sampling = SamplingParams(request.max_new_tokens, request.temperature, request.top_p, request.seed)
        if any(not isinstance(s, str) or not s for s in request.stop):
            raise InputError("stop: stop strings must be non-empty strings")
        check_reselect(request.reselect)
        stream = AskStream(request, sampling)
        self._pending.put(stream)
        return stream

    def close(self, timeout: float | None = None) -> None:
        """Take no new questions; finish the ones in flight; stop the threads."""
        self._closing.set()
        for t in self._planners:
            self._pending.put(None)
        for t in self._planners:
            t.join(timeout)
        self._wake.set()
        self._decoder.join(timeout)
        self._reselector.shutdown(wait=False)

    # ---- planning thread -----------------------------------------------------------------------

    def _plan_loop(self) -> None:
        while True:
            stream = self._pending.get()
            if stream is None:
                self._ready.put(None)  # tells the decoder that nothing more comes
                return
            if stream.cancelled:
                stream._end()
                continue
            self._slots.acquire()
            try:
                r = stream.request
                planned = self.engine.plan_question(r.doc_id, r.question, r.policy, r.answer_prefix, r.store,
                                                    r.max_new_tokens, pass1=self._run_pass1, **r.knobs)
                try:
                    check_reselect_policy(r.reselect, planned.policy)
                except BaseException:
                    planned.abandon()
                    raise
            except BaseException as e:  # the question's own error: reported through its stream
                self._leave(stream, e)
                continue
            self._ready.put((stream, planned))
            self._wake.set()

    def _run_pass1(self, job: Pass1Job) -> None:
        """A planner's pass 1: the decoding thread runs it (with the others waiting) in its next turn."""
        fut: Future = Future()
        self._pass1.put((job, fut))
        self._wake.set()
        fut.result()

    # ---- decoding thread -----------------------------------------------------------------------

    @staticmethod
    def _drain(q: queue.Queue) -> list:
        """Everything waiting in q now."""
        out = []
        while True:
            try:
                out.append(q.get_nowait())
            except queue.Empty:
                return out

    def _run_waiting_pass1(self) -> None:
        waiting = self._drain(self._pass1)
        if not waiting:
            return
        errors = run_jobs(self.engine.model, [job for job, _ in waiting])
        for (_, fut), e in zip(waiting, errors):
            if e is None:
                fut.set_result(None)
            else:
                fut.set_exception(e)

    def _decode_loop(self) -> None:
        planners_done = 0
        busy = False
        while True:
            self._run_waiting_pass1()
            # pass 2 of every question planned since the last step, as one forward; they join the batch
            # with their first token (from pass 2's logits)
            admitted = []
            for item in self._drain(self._ready):
                if item is None:
                    planners_done += 1
                    continue
                stream, planned = item
                if stream.cancelled:
                    planned.abandon()
                    self._leave(stream)
                    continue
                admitted.append(item)
            if admitted:
                self._admit(admitted)
            self._rejoin_reselected()
            self._park_due()
            if not self._active:
                if busy and self.listener is not None:
                    self.listener.on_step(0, self.queue_depth)  # the batch just emptied
                busy = False
                if planners_done == len(self._planners) and not self._parked:
                    return
                self._wake.wait(0.5)
                self._wake.clear()
                continue
            busy = True
            if self.listener is not None:
                self.listener.on_step(len(self._active), self.queue_depth)
            batch = list(self._active)
            t = time.perf_counter()
            try:
                logits = self.engine.model.decode_batch([q.last_token for _, q in batch], [q.cache for _, q in batch])
            except BaseException as e:  # a failed step fails every question in it, not the scheduler
                log.exception("decoding step failed")
                for stream, _ in batch:
                    self._leave(stream, e)
                self._active = []
                continue
            step_s = time.perf_counter() - t
            self._active = [(stream, seq) for i, (stream, seq) in enumerate(batch)
                            if self._step_one(stream, seq, logits[i], step_s)]

    def _park_due(self) -> None:
        """Questions due to re-select (`reselect_due`, as `Engine.ask` checks before a step) leave the batch;
        a re-selection thread runs their first half."""
        keep = []
        for stream, seq in self._active:
            if reselect_due(stream.request.reselect, seq) and not stream.cancelled:
                self._parked += 1
                self._reselector.submit(self._reselect_one, stream, seq)
            else:
                keep.append((stream, seq))
        self._active = keep

    def _reselect_one(self, stream: AskStream, seq: Sequence) -> None:
        """(a re-selection thread) The residual locator, its pass 1 run by the decoding thread with the
        others'; the grown plan's refill started. The result goes back to the decoding thread."""
        r = stream.request
        try:
            got = self.engine.reselect_plan(seq, self.engine.open_store(r.store), r.max_new_tokens - len(seq.tokens),
                                            pass1=self._run_pass1)
        except BaseException as e:  # the question's own error, reported when it comes back
            got = e
        self._rejoin.put((stream, seq, got))
        self._wake.set()

    def _rejoin_reselected(self) -> None:
        """Questions back from re-selection rejoin the batch: those whose plan grew after one pass 2 over
        their rebuilt caches (together); a failed or cancelled one leaves."""
        grown = []
        for stream, seq, got in self._drain(self._rejoin):
            self._parked -= 1
            if isinstance(got, BaseException):
                log.error("re-selection failed: %s", got)
                self._leave(stream, got)
            elif stream.cancelled:
                if got is not None:
                    got[0].abandon()
                self._leave(stream)
            elif got is None:  # nothing new: it goes on as it was
                self._active.append((stream, seq))
            else:
                grown.append((stream, seq, got))
        if not grown:
            return
        prepared = self._pass2([planned for _, _, (planned, _) in grown], "pass 2 of re-selection")
        for (stream, seq, (_, new)), r in zip(grown, prepared):
            if isinstance(r, BaseException):
                self._leave(stream, r)
                continue
            self.engine.reselect_join(seq, r, new)
            self._active.append((stream, seq))

    def _pass2(self, planned: list, what: str) -> list:
        """`Engine.run_pass2` of planned questions: per question its `Prepared` or its error; when the
        forward itself fails, every question in it gets that error."""
        try:
            return self.engine.run_pass2(planned)
        except BaseException as e:
            log.exception("%s failed", what)
            return [e] * len(planned)

    def _admit(self, admitted: list) -> None:
        prepared = self._pass2([planned for _, planned in admitted], "pass 2")
        for (stream, _), p in zip(admitted, prepared):
            if isinstance(p, BaseException):
                self._leave(stream, p)
                continue
            r = stream.request
            try:
                seq = Sequence(p, self.engine.tokenizer, stream.sampling, r.stop, start=stream.submitted)
            except BaseException as e:
                self._leave(stream, e)
                continue
            if self._step_one(stream, seq, p.logits, 0.0):
                self._active.append((stream, seq))

    def _step_one(self, stream: AskStream, seq: Sequence, logits, step_s: float) -> bool:
        """Push one token into a sequence and emit its text. Returns whether it goes on decoding; a
        finished, cancelled or failed question gives its slot back."""
        if stream.cancelled:
            self._leave(stream)
            return False
        try:
            delta = seq.push(logits, step_s)
        except BaseException as e:
            self._leave(stream, e)
            return False
        if delta:
            stream._emit(Delta(delta))
        if not seq.finished:
            return True
        self._slots.release()
        answer = seq.answer()
        stream._emit(Done(answer))
        stream._end()
        if self.listener is not None:
            self.listener.on_done(answer)
        return False

    def _leave(self, stream: AskStream, error: BaseException | None = None) -> None:
        """A question leaves without an answer (cancelled, or failed with `error`): its slot comes back."""
        self._slots.release()
        if error is None:
            stream._end()
        else:
            self._report_error(stream, error)

    def _report_error(self, stream: AskStream, e: BaseException) -> None:
        stream._fail(e)
        if self.listener is not None:
            self.listener.on_error(e)
