"""Would a second look at the library locator's best chunks rank the fact's document first more often?

Offline, on a library of `tools/tasks/library.py` (use a probe seed, not the evaluation's seed 0): for each
question, the shipped locator (`locator.library_chunk_scores`: one softmax per question row over every
document's index keys, rows' evidence summed) ranks all chunks; its top `--candidates` chunks are then
fetched from the store (every layer) and re-scored at the calibrated model's best heads (`--heads`, from
its calibration's `top_heads`) with one softmax per row over the candidates' tokens only. A document's
score is its best chunk's; the figure is how often the fact's document ranks first.

    python tools/library_rerank_study.py --docs 100 --questions 20 --seed 1 --store-dir DIR

Re-scoring rules per head: `sum` adds each row's largest probability in the chunk (the shipped rule's
form), `rowmax` keeps the largest over rows, `peak` weights each row by how much more its best candidate
gets than the candidates' mean; heads are then summed (`-sum`) or the best taken (`-max`).

`--index-heads 4,6` also ranks with the shipped scoring over a locator index of the N best calibrated heads
(`index-N`; their keys rebuilt from the stored chunks, rotated at their positions, rounded to float16 as an
index is stored): what a wider index would find, without re-ingesting. Ends with one JSON line: top-1
counts per rule.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

RULES = ("sum", "rowmax", "peak")


def row_rule(p: torch.Tensor, rule: str) -> torch.Tensor:
    """p [rows, candidates] (each row's largest probability per candidate) -> [candidates]."""
    if rule == "sum":
        return p.sum(0)
    if rule == "rowmax":
        return p.amax(0)
    weight = (p.amax(1) - p.mean(1)).clamp_min(0)  # rows that prefer one candidate count, shared phrases not
    return (p * weight[:, None]).sum(0)


def doc_rank(scores: torch.Tensor, owners: list[int], target: int) -> int:
    """Rank (0 = first) of `target` among documents scored by their best chunk; len(set(owners)) if absent."""
    best: dict[int, float] = {}
    for s, o in zip(scores.tolist(), owners):
        best[o] = max(best.get(o, -math.inf), s)
    if target not in best:
        return len(best)
    return sorted(best.values(), reverse=True).index(best[target])


def index_from_store(store, doc, heads: list[tuple[int, int]], model) -> torch.Tensor:
    """[len(heads), n_tokens, D]: `doc`'s keys at `heads` from its stored chunks, rotated at their positions and
    rounded to float16, as a locator index holds them."""
    keys = {}
    for layer in sorted({layer for layer, _ in heads}):
        arrs = [torch.from_numpy(a) for _, a in store.fetch(doc.doc_id, list(range(doc.n_chunks)), (layer, layer + 1))]
        k = torch.cat([a[0, 0] for a in arrs], 1)[:, :doc.n_tokens].float()  # [Hkv, n, D] before RoPE
        for g in (g for lay, g in heads if lay == layer):
            keys[(layer, g)] = model.ropes[layer].rotate(k[g][None], torch.arange(doc.n_tokens))[0]
    return torch.stack([keys[h] for h in heads]).half().float()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--docs", type=int, default=100)
    ap.add_argument("--questions", type=int, default=20)
    ap.add_argument("--seed", type=int, default=1, help="library seed (the evaluation uses 0: keep apart)")
    ap.add_argument("--candidates", type=int, default=16)
    ap.add_argument("--heads", default="1,4,8,16", help="numbers of top calibrated heads to re-score with")
    ap.add_argument("--index-heads", default="", help="index sizes (best calibrated heads) to rank with, e.g. 4,6")
    ap.add_argument("--store-dir", required=True, help="embedded store (a rerun skips ingestion)")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    from acre_model import locator
    from acre_model.calibrate import calibration_record
    from acre_model.engine import Engine
    from acre_model.library import Library
    from acre_model.pass1 import run_pass1
    from acre_store import EmbeddedStore

    from tools.tasks.library import library_questions, make_library

    torch.set_num_threads(args.threads)
    eng = Engine.from_pretrained()
    cfg, model = eng.cfg, eng.model
    top = [(h["layer"], h["kv_head"]) for h in calibration_record(eng.path, eng.fingerprint)["top_heads"]]
    n_heads = [min(int(h), len(top)) for h in args.heads.split(",")]
    docs = make_library(eng.tokenizer.encode, args.docs, seed=args.seed)
    st = EmbeddedStore(args.store_dir)
    ids = [eng.ingest(d.text, store=st, name=d.name).doc_id for d in docs]
    eng.max_open_docs = max(eng.max_open_docs, args.docs)
    lib = Library([eng.load_document(i, st) for i in ids])
    n_rep, D, L = cfg.num_attention_heads // cfg.num_key_value_heads, cfg.head_dim, cfg.num_hidden_layers
    n0 = lib.docs[0].n_tokens
    wide = {n: top[:n] for n in (int(x) for x in args.index_heads.split(",") if x)}
    wide_docs = {n: [dataclasses.replace(d, index_heads=hs, index_keys=index_from_store(st, d, hs, model))
                     for d in lib.docs] for n, hs in wide.items()}
    # pass 1 records queries at the layers of the locator's heads, the re-scoring heads and the wider indexes
    probed = sorted({layer for layer, _ in [*lib.docs[0].index_heads, *top[:max(n_heads)],
                                            *top[:max(wide, default=0)]]})
    counts: dict[str, int] = {}
    n_q = 0
    for q in library_questions(docs, args.questions, seed=args.seed):
        q_ids = torch.tensor(eng.tokenizer.question_ids(q.question, q.answer_prefix))
        probe = run_pass1(model, lib.docs[0], q_ids, probed, want_queries=True, want_probs=False)
        scores = locator.library_chunk_scores(lib.docs, probe, n_rep, D, model.rope.inv_freq)
        owner = [i for i, s in enumerate(scores) for _ in range(s.numel())]
        local = [c for s in scores for c in range(s.numel())]
        flat = torch.cat(scores)
        cand = flat.topk(min(args.candidates, flat.numel())).indices.tolist()
        owners = [owner[c] for c in cand]
        ranks = {"shipped": doc_rank(flat, owner, q.target)}
        for n, wd in wide_docs.items():
            wide_scores = locator.library_chunk_scores(wd, probe, n_rep, D, model.rope.inv_freq)
            ranks[f"index-{n}"] = doc_rank(torch.cat(wide_scores), owner, q.target)
        chunks = []  # per candidate: [L, 2, Hkv, len, D] from the store, its doc, its first position
        for c in cand:
            d = lib.docs[owner[c]]
            arr = next(iter(st.fetch(d.doc_id, [local[c]], layers=(0, L))))[1]
            chunks.append((torch.from_numpy(arr).float(), d, local[c] * d.chunk_size))

        def head_rows(layer: int, g: int) -> torch.Tensor:  # [rows, candidates]
            qs = probe.queries[layer][g * n_rep:(g + 1) * n_rep].reshape(-1, D)
            parts = []
            for kv, d, start in chunks:
                k = model.ropes[layer].rotate(kv[layer, 0, g][None], torch.arange(start, start + kv.shape[3]))[0]
                x = locator.shift_queries(qs, d.n_tokens - n0, model.rope.inv_freq) @ k.T
                if start == 0:
                    x[:, :d.layout.n_sink] = -math.inf
                parts.append(x)
            probs = (torch.cat(parts, 1) / math.sqrt(D)).softmax(-1)
            return torch.stack([p.amax(1) for p in probs.split([x.shape[1] for x in parts], 1)], 1)

        rows = {h: head_rows(*h) for h in top[:max(n_heads)]}
        for rule in RULES:
            for h in n_heads:
                per = torch.stack([row_rule(rows[x], rule) for x in top[:h]])
                ranks[f"{rule}-sum{h}"] = doc_rank(per.sum(0), owners, q.target)
                ranks[f"{rule}-max{h}"] = doc_rank(per.amax(0), owners, q.target)
        print(f"doc {q.target:3d}: " + " ".join(f"{k}={v}" for k, v in ranks.items()), flush=True)
        for k, v in ranks.items():
            counts[k] = counts.get(k, 0) + (v == 0)
        n_q += 1
    st.close()
    print(f"fact's document ranked first, of {n_q} questions ({args.docs} documents, seed {args.seed}):")
    for k, v in counts.items():
        print(f"  {k:14s} {v}")
    print(json.dumps({"n_docs": args.docs, "n_questions": n_q, "seed": args.seed, "top1": counts}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
