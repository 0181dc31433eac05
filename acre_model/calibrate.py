"""Find a model's retrieval heads: KV heads whose attention from a question lands on the passage that
answers it. Training-free: synthetic probes (facts planted in generated prose, questions about them),
run exactly as asking runs (pass 1 over the L1 attend set), each KV head scored alone.

Probes come from `synth.make_probe_doc`: other templates and another seed namespace than the
evaluation documents, so calibration never sees an evaluation needle. Nothing question-specific is
used at ask time: every question token is scored.

The result is written beside the model as `retrieval_heads.json`; the default model's result also
ships with the project (`acre_model/data/`), keyed by the model fingerprint.
"""
from __future__ import annotations

import json
import math
import time
from importlib import resources
from pathlib import Path

import torch

from .doc_state import DocState, LayoutConfig
from .errors import AcreError
from .ingest import build_l1_parts, prefill_document
from .locator import max_per_chunk
from .pass1 import run_pass1
from .synth import make_probe_doc

RESULT_FILE = "retrieval_heads.json"


def _candidates(model_path: Path) -> list[Path]:
    out = [model_path / RESULT_FILE]
    data = resources.files("acre_model") / "data"
    try:
        out += sorted(Path(str(p)) for p in data.iterdir() if str(p).endswith(".retrieval_heads.json"))
    except FileNotFoundError:
        pass
    return out


def calibration_record(model_path: Path, fingerprint: str) -> dict:
    """The model's calibration result (`heads`, `top_heads` with each head's scores, the probe settings):
    the model folder's own file first, then the package's bundled ones, matched by fingerprint."""
    for p in _candidates(Path(model_path)):
        if not p.is_file():
            continue
        try:
            d = json.loads(p.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if d.get("fingerprint") == fingerprint:
            return d
    raise AcreError(f"model {Path(model_path).name} has no calibration (retrieval heads): "
                    f"run `acre model calibrate {model_path}`")


def load_retrieval_heads(model_path: Path, fingerprint: str) -> list[tuple[int, int]]:
    return [tuple(h) for h in calibration_record(model_path, fingerprint)["heads"]]


def head_chunk_scores(queries: torch.Tensor, keys: torch.Tensor, n_tokens: int, chunk_size: int) -> torch.Tensor:
    """queries [R, D] (one KV head's group, all question tokens), keys [n, D] rotated -> [n_chunks] max rule."""
    p = (queries @ keys.T / math.sqrt(keys.shape[-1])).softmax(-1).amax(0)
    return max_per_chunk(p, n_tokens, chunk_size)


def probe_head_ranks(engine, doc, layout: LayoutConfig) -> tuple[torch.Tensor, list[int]]:
    """Rank [n_layers, n_kv_heads] of the needle's chunk under each KV head alone (0 = top), + needle chunks."""
    tok, model, cfg = engine.tokenizer, engine.model, engine.cfg
    ids = tok.document_ids(doc.text)
    pf = prefill_document(model, ids, layout)
    parts = build_l1_parts(pf, layout, [])
    ds = DocState.from_parts("probe", {}, parts, len(ids), layout.chunk_size, model.dtype, model.device)
    needle_chunks = ds.chunks_of(tok.document_token_span(doc.text, doc.needle_char_span))
    q = torch.tensor(tok.question_ids(doc.question, doc.answer_prefix))
    probe = run_pass1(model, ds, q, list(range(cfg.num_hidden_layers)), want_queries=True, want_probs=False)
    L, G, r = cfg.num_hidden_layers, cfg.num_key_value_heads, cfg.n_rep
    ranks = torch.zeros(L, G)
    for l in range(L):
        for g in range(G):
            qs = probe.queries[l][g * r:(g + 1) * r].reshape(-1, cfg.head_dim)
            s = head_chunk_scores(qs, pf.keys_rot[l][g].float(), len(ids), layout.chunk_size)
            best_needle = max(float(s[c]) for c in needle_chunks)
            ranks[l, g] = int((s > best_needle).sum())
    return ranks, needle_chunks


def rank_heads(mrr: torch.Tensor, layers: list[int]) -> torch.Tensor:
    """Flat indices (layer * n_kv_heads + head) of the heads of `layers`, best mean reciprocal rank
    (mrr [n_layers, n_kv_heads]) first. Only global layers are candidates: a local (sliding-window)
    layer's keys are never compared with a question beyond its window, and a hybrid model's store keeps
    the global layers only."""
    allowed = torch.zeros_like(mrr, dtype=torch.bool)
    allowed[layers] = True
    order = mrr.flatten().argsort(descending=True)
    return order[allowed.flatten()[order]]


def calibrate(engine, n_probes: int = 12, lengths: tuple[int, ...] = (1024, 2048), n_heads: int = 6,
              layout: LayoutConfig | None = None, seed: int = 0, log=print) -> dict:
    layout = layout or LayoutConfig()
    tokenize = engine.tokenizer.encode
    all_ranks = []
    t0 = time.perf_counter()
    for i in range(n_probes):
        n = lengths[i % len(lengths)]
        depth = (i * 0.37 + 0.05) % 0.95
        doc = make_probe_doc(tokenize, n, depth, seed=seed * 1000 + i)
        ranks, _ = probe_head_ranks(engine, doc, layout)
        all_ranks.append(ranks)
        log(f"probe {i + 1}/{n_probes}: {n} tokens, depth {depth:.2f}, best head rank "
            f"{int(ranks.min())}, {time.perf_counter() - t0:.0f}s")
    R = torch.stack(all_ranks)  # [P, L, G]
    mrr = (1.0 / (1.0 + R)).mean(0)  # mean reciprocal rank of the needle's chunk, per head
    order = rank_heads(mrr, engine.cfg.global_layers)
    G = engine.cfg.num_key_value_heads
    heads = [(int(i) // G, int(i) % G) for i in order[:n_heads]]
    # recall@8 of the chosen set combined by the max rule is measured at ask time; here per head
    top = [{"layer": int(i) // G, "kv_head": int(i) % G, "mrr": float(mrr.flatten()[i]),
            "hit@8": float((R.flatten(1)[:, i] < 8).float().mean())} for i in order[:16]]
    return {"model": engine.path.name, "fingerprint": engine.fingerprint, "heads": [list(h) for h in heads],
            "top_heads": top, "n_probes": n_probes, "lengths": list(lengths), "chunk_size": layout.chunk_size,
            "seconds": time.perf_counter() - t0}
