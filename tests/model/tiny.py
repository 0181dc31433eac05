"""A tiny random Llama with the real tokenizer (vocab 49152) and a calibration file, for engine tests."""
from __future__ import annotations

import json
import shutil

import torch
from safetensors.torch import save_file

from acre_model.config import GLOBAL, LOCAL, ModelConfig
from acre_model.engine import Engine
from acre_model.model import LlamaModel

DOC = " ".join(f"Sentence number {i} says that the {w} is {c}." for i, (w, c) in
               enumerate([("sky", "blue"), ("grass", "green"), ("sun", "yellow"), ("sea", "grey")] * 12))


# A tiny hybrid (Gemma 3 style): local layers with a short window between global ones.
HYBRID_WINDOW = 48
HYBRID_TYPES = [LOCAL, GLOBAL, LOCAL, GLOBAL]


def make_tiny_folder(path, src, seed: int, hybrid: bool = False):
    """A random tiny Llama (or, `hybrid`, a tiny Gemma 3 with local and global layers) with the real
    tokenizer (vocab 49152) and a calibration file (retrieval heads on global layers)."""
    path.mkdir(parents=True)
    kw = {}
    if hybrid:
        kw = dict(model_type="gemma3_text", num_hidden_layers=len(HYBRID_TYPES), layer_types=HYBRID_TYPES,
                  sliding_window=HYBRID_WINDOW, hidden_act="gelu_pytorch_tanh", rope_local_theta=10000.0,
                  query_pre_attn_scalar=16)
    cfg = ModelConfig.tiny(**{**dict(vocab_size=49152, num_hidden_layers=3, max_position_embeddings=2048,
                                     tie_word_embeddings=True, eos_token_id=[2], bos_token_id=1), **kw})
    torch.manual_seed(seed)
    m = LlamaModel(cfg)
    with torch.no_grad():
        for p in m.parameters():
            p.normal_(0, 0.05) if p.dim() == 2 else p.fill_(0.0 if hybrid else 1.0)
    save_file({k: v.contiguous() for k, v in m.state_dict().items()}, str(path / "model.safetensors"))
    (path / "config.json").write_text(json.dumps(cfg.to_hf_dict()))
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(src / f, path / f)
    eng = Engine.from_pretrained(str(path), device="cpu")
    (path / "retrieval_heads.json").write_text(json.dumps({"fingerprint": eng.fingerprint,
                                                            "heads": [[1, 0], [3, 1]] if hybrid else [[1, 0], [2, 1]]}))
    return path




def spread_weights(m: torch.nn.Module, other: str, std: float) -> None:
    """Random init is small: draw a transformers model's matrices (and the parameters whose name holds
    `other`, with `std`) wider, so attention is far from uniform and bugs show."""
    with torch.no_grad():
        for n, p in m.named_parameters():
            if p.dim() == 2:
                p.normal_(0, 0.08)
            elif other in n:
                p.normal_(0, std)
    m.eval()


def tiny_with_doc(root, src, seed: int):
    """(engine, store, DocInfo) of DOC ingested into an embedded store under `root`, on a tiny random
    model made from the default model at `src`; the caller closes the store."""
    from acre_store import EmbeddedStore

    eng = Engine.from_pretrained(str(make_tiny_folder(root / "m", src, seed=seed)), device="cpu")
    store = EmbeddedStore(str(root / "s"))
    return eng, store, eng.ingest(DOC, store=store)
