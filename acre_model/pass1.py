"""Pass 1: the question over the document's L1 attend set, before any refill.

The question's tokens run at their original positions (continuing after the document) over the attend
set only. An `AttnProbe` records what the locators need at chosen layers: the question's queries (for
the locator index) and/or its attention probabilities over the attend set (for the seed's L1 locator).

The forward itself is a `Pass1Job`: one item of `LlamaModel.forward_batch` up to the last probed layer.
Alone it runs as a batch of one; a `Pass1Runner` (the scheduler's) may run the jobs of several questions
as one batched forward instead. A question's numbers are the same either way (forward_batch pads each
item's rows, see there).

Re-selection during decoding runs pass 1 again every N answer tokens with the answer so far as part of
the query. A `Pass1State` keeps what the last such pass 1 computed (its cache: the attend set plus the
tokens run so far, to the last probed layer; the queries recorded), so the next one runs only the answer's
new tokens over it (`extend_pass1`): causal attention makes the earlier rows' queries what a full re-run
would compute, up to floating-point summation order.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

from .doc_state import DocState
from .kv_cache import KVCache
from .model import AttnProbe, BatchItem


@dataclass
class Pass1Job:
    """One question's pass 1: its item (ids, a cache of the attend set, positions, probe) and the last
    layer to run (the last probed one: nothing later changes what the probe records)."""

    item: BatchItem
    last_layer: int


Pass1Runner = Callable[[Pass1Job], None]  # runs a job's forward (its probe is then filled), or raises


def run_jobs(model, jobs: list[Pass1Job]) -> list[BaseException | None]:
    """The jobs' forwards, batched by their last layer. Returns per job None (its probe is filled) or the
    error that stopped it."""
    out: list[BaseException | None] = [None] * len(jobs)
    for last in sorted({j.last_layer for j in jobs}):
        idx = [i for i, j in enumerate(jobs) if j.last_layer == last]
        try:
            res = model.forward_batch([jobs[i].item for i in idx], last_layer=last)
        except BaseException as e:  # the forward itself failed: every job in it fails
            res = [e] * len(idx)
        for i, r in zip(idx, res):
            out[i] = r if isinstance(r, BaseException) else None
    return out


def pass1_job(model, doc: DocState, q_ids: torch.Tensor, probe_layers: list[int], want_queries: bool,
              want_probs: bool) -> Pass1Job:
    """The job of q_ids [T] over the attend set (its cache built here), with a probe at `probe_layers`."""
    L = max(probe_layers) + 1
    # per layer the attend set; a hybrid document's unstored local layers see their window instead
    entries = [doc.pass1_entries(l) for l in range(L)]
    cache = KVCache.from_entries(model.ropes, [e[0] for e in entries], [e[1] for e in entries],
                                 [e[2] for e in entries], extra_capacity=len(q_ids))
    probe = AttnProbe(layers=probe_layers, want_probs=want_probs, want_queries=want_queries)
    pos = torch.arange(doc.n_tokens, doc.n_tokens + len(q_ids))
    return Pass1Job(BatchItem(q_ids, cache, pos, probe=probe), L - 1)


def run_pass1(model, doc: DocState, q_ids: torch.Tensor, probe_layers: list[int], want_queries: bool,
              want_probs: bool, runner: Pass1Runner | None = None) -> AttnProbe:
    """Runs q_ids [T] over the attend set (through `runner` when given, else as a batch of one); returns
    the probe filled at `probe_layers`: `queries[l]` [n_heads, T, head_dim] (rotated) and/or `probs[l]`
    [n_heads, T, n_l1 + T]."""
    job = pass1_job(model, doc, q_ids, probe_layers, want_queries, want_probs)
    _run(model, job, runner)
    return job.item.probe


@dataclass
class Pass1State:
    """A query's pass 1 so far, kept to extend (`extend_pass1`): the cache (the attend set, then the `n`
    tokens run so far, layers 0..max(layers)) and the queries recorded per probed layer [Hq, n, D]."""

    layers: tuple[int, ...]
    cache: KVCache
    n: int
    queries: dict[int, torch.Tensor] = field(default_factory=dict)

    def probe(self) -> AttnProbe:
        """An `AttnProbe` holding every query row recorded so far (what `run_pass1` returns)."""
        return AttnProbe(layers=list(self.layers), want_probs=False, want_queries=True, queries=dict(self.queries))


def extend_pass1(model, doc: DocState, ids: torch.Tensor, layers: tuple[int, ...], state: Pass1State | None,
                 runner: Pass1Runner | None = None) -> Pass1State:
    """Pass 1 of `ids` [T] (the queries at `layers`) over the attend set, reusing `state` when it holds a
    prefix of them at the same layers: only ids[state.n:] run, at their positions, over its cache. Returns
    the state after all T tokens (its `probe()` is what `run_pass1(..., want_queries=True)` returns). On an
    error `state` must not be used again (its cache may hold some layers' new entries)."""
    layers = tuple(layers)
    if state is None or state.layers != layers or state.n > len(ids):
        job = pass1_job(model, doc, ids, list(layers), want_queries=True, want_probs=False)
        _run(model, job, runner)
        return Pass1State(layers, job.item.cache, len(ids), dict(job.item.probe.queries))
    if state.n == len(ids):
        return state
    new = ids[state.n:]
    probe = AttnProbe(layers=list(layers), want_probs=False, want_queries=True)
    pos = torch.arange(doc.n_tokens + state.n, doc.n_tokens + len(ids))
    _run(model, Pass1Job(BatchItem(new, state.cache, pos, probe=probe), max(layers)), runner)
    queries = {l: torch.cat([state.queries[l], probe.queries[l]], dim=1) for l in layers}
    return Pass1State(layers, state.cache, len(ids), queries)


def _run(model, job: Pass1Job, runner: Pass1Runner | None) -> None:
    if runner is not None:
        runner(job)
        return
    err = run_jobs(model, [job])[0]
    if err is not None:
        raise err
