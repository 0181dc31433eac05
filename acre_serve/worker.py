"""Worker: one serving process's state, and every operation the HTTP routes delegate to.

It owns the engine (model, tokenizer, loaded L1s, device chunk cache), the store it talks to, the
scheduler that batches questions, the metrics and the running ingests. The routes call these methods
and never touch model state themselves. Every method here is blocking: routes run the ones that
reach the store or the model in a thread, so the event loop keeps serving.
"""
from __future__ import annotations

import logging
import os

from acre_model.errors import InputError
from acre_store import resolve_doc_id
from acre_store.errors import StoreError

from .config import ServeConfig
from .errors import bad_request
from .ingests import IngestTracker
from .metrics import Metrics


log = logging.getLogger("acre_serve")

MAX_QUESTION_CHARS = 32768  # before tokenizing; the real bound is the model's context (checked too)


def doc_summary(meta) -> dict:
    """What `GET /v1/documents` says about one stored document (an acre_store DocMeta)."""
    return {"doc_id": meta.doc_id, "name": meta.name, "n_tokens": meta.layout.n_tokens,
            "n_chunks": meta.layout.n_chunks, "n_l1": int(meta.extra.get("n_l1", 0)), "nbytes": meta.nbytes,
            "created": meta.created, "pinned": meta.pinned, "model": meta.extra.get("model", "")}


class Worker:
    def __init__(self, cfg: ServeConfig, metrics: Metrics):
        from acre_model.engine import Engine
        from acre_model.scheduler import Scheduler

        self.cfg = cfg
        self.metrics = metrics
        self.engine = Engine.from_pretrained(cfg.model, device=cfg.device)
        self.engine.max_open_docs = cfg.max_open_docs
        self.model_name = self.engine.path.name
        self.scheduler = Scheduler(self.engine, max_batch=cfg.max_batch, listener=metrics)
        self.ingests = IngestTracker()
        log.info("worker %d: model %s on %s, store %s", os.getpid(), self.model_name, self.engine.device,
                 cfg.store or "embedded")

    @property
    def store(self):
        """The store (connected on first use and kept: a daemon that restarts is reconnected by gRPC)."""
        return self.engine.open_store(self.cfg.store)

    # ---- documents -------------------------------------------------------------------------------

    def ingest(self, text: str, name: str, collection: str | None = None) -> dict:
        """Prefill a new document (a no-op for one already stored); progress shows in `ingests`.
        `collection`: the library it belongs to (asked as `@NAME`)."""
        progress = self.ingests.start(name)
        self.metrics.ingests_running.inc()
        try:
            info = self.engine.ingest(text, store=self.store, name=name or None, collection=collection,
                                      on_progress=lambda done, total: self.ingests.update(progress, done, total))
        except InputError as e:  # empty, longer than the model takes, or stored in another collection
            field = "collection" if collection is not None and "collection" in str(e) else "text"
            raise bad_request(field, str(e)) from None
        finally:
            self.ingests.finish(progress)
            self.metrics.ingests_running.dec()
        self.metrics.ingested(info)
        return info.to_dict()

    def resolve(self, ref: str) -> str:
        """A document id from an id (one store call), a unique prefix of 4+ characters, or a name."""
        return resolve_doc_id(self.store, ref)

    def resolve_ask(self, ref: str | list[str]) -> str | list[str]:
        """What a question is about: one document id, or the ids of a library (a list of references,
        "REF1,REF2,..." or "@COLLECTION"; `acre_model.library.resolve_library`)."""
        from acre_model.library import is_library_ref, resolve_library

        try:
            if isinstance(ref, list):
                return [self.resolve(r.strip()) for r in ref]
            return resolve_library(self.store, ref) if is_library_ref(ref) else self.resolve(ref)
        except InputError as e:  # an empty reference in a list
            raise bad_request("doc_id", str(e)) from None

    def documents(self) -> list[dict]:
        return [doc_summary(m) for m in self.store.list()]

    def document(self, ref: str) -> dict:
        return doc_summary(self.store.info(self.resolve(ref)))

    def delete(self, ref: str) -> str:
        doc_id = self.resolve(ref)
        self.store.delete(doc_id)
        self.engine.forget(doc_id)
        return doc_id

    # ---- questions -------------------------------------------------------------------------------

    def ask_request(self, p, question_field: str = "question"):
        """The scheduler's AskRequest for a validated schemas.AskIn, with the document resolved and the
        question checked against the model's context (a 400 names `question_field`)."""
        from acre_model.scheduler import AskRequest

        if len(p.question) > MAX_QUESTION_CHARS:
            raise bad_request(question_field, f"is {len(p.question)} characters; at most {MAX_QUESTION_CHARS}")
        doc_id = self.resolve_ask(p.doc_id)
        n_q = self.question_tokens(p.question, p.answer_prefix)
        if isinstance(doc_id, list):  # a library: its active cache is bounded by the plan (checked when planned)
            n_doc, what = 0, ""
        else:
            n_doc = self.engine.load_document(doc_id, self.store).n_tokens  # loaded once, then cached
            what = f" with the document's {n_doc}"
        if n_doc + n_q + p.max_new_tokens > self.engine.max_context:
            raise bad_request(question_field, f"is {n_q} tokens (with the answer prefix);{what} and max_new_tokens "
                                              f"{p.max_new_tokens} that exceeds the model's context of "
                                              f"{self.engine.max_context}")
        return AskRequest(doc_id=doc_id, question=p.question, policy=p.policy, answer_prefix=p.answer_prefix,
                          max_new_tokens=p.max_new_tokens, knobs=dict(p.knobs), temperature=p.temperature,
                          top_p=p.top_p, seed=p.seed, stop=list(p.stop), store=self.store, reselect=p.reselect)

    def question_tokens(self, question: str, answer_prefix: str) -> int:
        return len(self.engine.tokenizer.question_ids(question, answer_prefix))

    def submit(self, req):
        """Hand a request to the scheduler; returns its stream (Delta events, then Done)."""
        return self.scheduler.submit(req)

    # ---- health ----------------------------------------------------------------------------------

    def refresh_metrics(self) -> None:
        """Bring the metrics that mirror live state up to date (before a scrape, after a question)."""
        self.metrics.chunk_cache(self.engine.chunk_cache.stats())
        self.metrics.load(self.scheduler.batch_size, self.scheduler.queue_depth)

    def health(self) -> dict:
        self.refresh_metrics()
        try:
            self.store.stats()  # one cheap call that both the daemon client and the embedded store answer
            ok = True
        except StoreError as e:
            log.warning("health: store unreachable: %s", e)
            ok = False
        return {"status": "ok" if ok else "degraded", "model": self.model_name, "store": "ok" if ok else "unreachable",
                "pid": os.getpid(), "batch_size": self.scheduler.batch_size, "queue_depth": self.scheduler.queue_depth,
                "ingests": len(self.ingests.running())}

    def close(self) -> None:
        """Finish in-flight questions, then close the stores (the lifespan's shutdown)."""
        self.scheduler.close()
        self.engine.close()
