"""`Sequence`: one answer being decoded. Turns each step's logits into a token, the text it adds, and
the decision to stop; `Engine.ask` (one sequence) and the `Scheduler` (many, batched) both step
through it, so an answer is the same whichever path decodes it.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from .errors import InputError
from .generation import SamplingParams, select_token
from .results import Answer, Prepared

# Text ending in this character may be the start of a multi-byte character whose next token completes it.
_PARTIAL = "\ufffd"


@dataclass
class SequenceTimes:
    start: float  # when the question was accepted (perf_counter)
    first_token: float = 0.0
    decode_s: float = 0.0  # time spent in decoding steps this sequence took part in
    steps: int = 0


class Sequence:
    def __init__(self, prepared: Prepared, tokenizer, sampling: SamplingParams, stop: list[str] | tuple = (),
                 start: float | None = None):
        if any(not s for s in stop):
            raise InputError("stop: stop strings must be non-empty")
        self.p = prepared
        self.tokenizer = tokenizer
        self.sampling = sampling
        self.stop_ids = set(tokenizer.stop_ids)
        self.stop = list(stop)
        self.tokens: list[int] = []
        self.text = ""  # decoded so far, cut at a stop string
        self.emitted = 0  # characters of `text` already handed out as deltas
        self.finished = False
        self.stopped = False  # ended on a stop token or stop string (else: max_new_tokens)
        self.times = SequenceTimes(start if start is not None else time.perf_counter())
        self.reselected: list[int] = []  # chunks re-selection added while decoding
        self.reselect_done_at = -1  # answer length at the last re-selection (it runs once per length)
        self.pass1_state = None  # re-selection's pass 1 so far (`pass1.Pass1State`), extended each time
        self._gen = None
        if sampling.temperature > 0:
            self._gen = torch.Generator(device="cpu")
            self._gen.manual_seed(sampling.seed if sampling.seed is not None else torch.seed())
        prepared.cache.reserve(sampling.max_new_tokens)

    @property
    def cache(self):
        return self.p.cache

    @property
    def last_token(self) -> int:
        return self.tokens[-1]

    def push(self, logits: torch.Tensor, step_s: float = 0.0) -> str:
        """Take the next token from logits [vocab]; returns the text it adds (possibly empty)."""
        if self.finished:
            raise RuntimeError("push on a finished sequence")
        if self.tokens:
            self.times.decode_s += step_s
            self.times.steps += 1
        else:
            self.times.first_token = time.perf_counter()
        tok = select_token(logits.cpu(), self.sampling, self._gen)
        if tok in self.stop_ids:
            self.finished = self.stopped = True
            return self._flush()
        self.tokens.append(tok)
        self.text = self.tokenizer.decode(self.tokens)
        for s in self.stop:
            # search only where the new token can have completed a match
            i = self.text.find(s, max(0, self.emitted - len(s)))
            if i >= 0:
                self.text = self.text[:i]
                self.finished = self.stopped = True
        if len(self.tokens) >= self.sampling.max_new_tokens:
            self.finished = True
        return self._flush()

    def _flush(self) -> str:
        """The text not yet handed out, holding back (until the end) what may still change: a partial
        character, or a tail that could be the start of a stop string."""
        hold = 0
        if not self.finished:
            if self.text.endswith(_PARTIAL):
                hold = 1
            for s in self.stop:
                for k in range(min(len(s) - 1, len(self.text)), 0, -1):
                    if self.text.endswith(s[:k]):
                        hold = max(hold, k)
                        break
        end = len(self.text) - hold
        end = max(end, self.emitted)
        delta = self.text[self.emitted:end]
        self.emitted = end
        return delta

    def answer(self) -> Answer:
        p, t = self.p, self.times
        now = time.perf_counter()
        return Answer(
            answer=self.text.strip(), policy=p.policy.name, kv_ratio=p.layout.kv_ratio,
            refilled_chunks=list(p.plan.chunks), entropy=p.plan.entropy, k=p.plan.k, mode=p.plan.mode,
            ttft_s=(t.first_token or now) - t.start, total_s=now - t.start,
            decode_ms_per_token=1000 * t.decode_s / max(1, t.steps), n_tokens=p.doc.n_tokens,
            n_active=max(p.layout.n_active, default=0), n_new_tokens=len(self.tokens), fetch_s=p.fetch.fetch_s,
            fetch_wait_s=p.fetch.wait_s, fetched_bytes=p.fetch.fetched_bytes,
            index_share=p.doc.index_nbytes / (p.doc.kv_nbytes or 1), doc_id=p.doc.doc_id,
            finish_reason="stop" if self.stopped else "length", sources=p.sources,
            reselected_chunks=list(self.reselected))
