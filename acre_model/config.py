"""Model configuration for the Llama family, read from a Hugging Face `config.json`.

Covers Llama 2/3 (including `rope_scaling` type `llama3`), Mistral and Qwen2 (q/k/v bias), with tied or
untied embeddings and grouped-query attention; and Gemma 3 (text), the same decoder with a few switches
(see `is_gemma3`): RMSNorm scaling by (1 + weight), q/k norms, norms after attention and around the MLP,
a tanh-GELU gated MLP, embeddings scaled by sqrt(hidden_size), a query scale of its own, and
sliding-window ("local") layers with their own RoPE base between full ("global") layers.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from .errors import ModelLoadError

SUPPORTED_ARCHITECTURES = {
    "llama": "LlamaForCausalLM",
    "mistral": "MistralForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "gemma3_text": "Gemma3ForCausalLM",
}
LOCAL, GLOBAL = "sliding_attention", "full_attention"  # transformers' names of the two layer types


@dataclass
class ModelConfig:
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int = 0  # 0: hidden_size // num_attention_heads
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    rope_scaling: dict | None = None
    max_position_embeddings: int = 2048
    tie_word_embeddings: bool = False
    attention_bias: bool = False  # q/k/v projections carry a bias (Qwen2)
    model_type: str = "llama"
    bos_token_id: int | None = None
    eos_token_id: list[int] = field(default_factory=list)
    # Gemma 3 only (None/"silu" elsewhere, and then left out of the fingerprint: see identity()).
    hidden_act: str = "silu"  # "silu" or "gelu_pytorch_tanh" (tanh-approximated GELU)
    query_pre_attn_scalar: float | None = None  # attention scale is this ** -0.5 (None: head_dim)
    sliding_window: int | None = None  # a local layer's query sees keys less than this many positions back
    layer_types: list[str] | None = None  # per layer LOCAL or GLOBAL (None: all GLOBAL)
    rope_local_theta: float | None = None  # RoPE base of local layers (global layers use rope_theta)
    final_logit_softcapping: float | None = None  # logits -> c * tanh(logits / c)

    def __post_init__(self) -> None:
        if self.head_dim == 0:
            self.head_dim = self.hidden_size // self.num_attention_heads
        if isinstance(self.eos_token_id, int):
            self.eos_token_id = [self.eos_token_id]
        self.eos_token_id = list(self.eos_token_id or [])
        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                     "num_attention_heads", "num_key_value_heads", "head_dim"):
            if int(getattr(self, name)) <= 0:
                raise ModelLoadError(f"config: {name} must be positive, got {getattr(self, name)}")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ModelLoadError(
                f"config: num_attention_heads ({self.num_attention_heads}) is not a multiple of "
                f"num_key_value_heads ({self.num_key_value_heads})")
        if self.head_dim % 2:
            raise ModelLoadError(f"config: head_dim must be even for RoPE, got {self.head_dim}")
        if self.rope_scaling is not None:
            kind = self.rope_scaling.get("rope_type", self.rope_scaling.get("type"))
            if kind not in (None, "default", "llama3", "linear"):
                raise ModelLoadError(f"config: unsupported rope_scaling type {kind!r}")
        if self.hidden_act not in ("silu", "gelu_pytorch_tanh"):
            raise ModelLoadError(f"config: unsupported hidden activation {self.hidden_act!r}")
        if self.layer_types is not None:
            self.layer_types = list(self.layer_types)
            if len(self.layer_types) != self.num_hidden_layers:
                raise ModelLoadError(f"config: layer_types has {len(self.layer_types)} entries for "
                                     f"{self.num_hidden_layers} layers")
            bad = sorted(set(self.layer_types) - {LOCAL, GLOBAL})
            if bad:
                raise ModelLoadError(f"config: unsupported layer type(s) {bad}")
            if LOCAL in self.layer_types and not (self.sliding_window and self.sliding_window > 0):
                raise ModelLoadError("config: local (sliding_attention) layers need a positive sliding_window")

    @property
    def is_gemma3(self) -> bool:
        """Gemma 3's switches: norms scale by (1 + weight), q/k norms, norms after attention and
        around the MLP ("sandwich"), embeddings scaled by sqrt(hidden_size)."""
        return self.model_type == "gemma3_text"

    @property
    def attn_scale(self) -> float:
        """What q.k is multiplied by before the softmax."""
        return (self.query_pre_attn_scalar or self.head_dim) ** -0.5

    def is_local(self, layer: int) -> bool:
        """Whether `layer` attends through a sliding window (and rotates with the local RoPE base)."""
        return self.layer_types is not None and self.layer_types[layer] == LOCAL

    @property
    def global_layers(self) -> list[int]:
        return [i for i in range(self.num_hidden_layers) if not self.is_local(i)]

    def local_rope_config(self) -> "ModelConfig":
        """The config local layers take their RoPE from: the local base, no scaling (as transformers)."""
        from dataclasses import replace

        return replace(self, rope_theta=self.rope_local_theta or self.rope_theta, rope_scaling=None)

    def identity(self) -> dict[str, Any]:
        """The fields that identify the model (its fingerprint): every field, less the Gemma-only ones
        at their defaults, so that a Llama's fingerprint is what it was before they existed."""
        d = asdict(self)
        for k in _GEMMA_FIELDS:
            if d[k] == _DEFAULTS[k]:
                d.pop(k)
        return d

    @property
    def n_rep(self) -> int:
        """Query heads per KV head (grouped-query attention)."""
        return self.num_attention_heads // self.num_key_value_heads

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ModelConfig":
        mt = d.get("model_type", "llama")
        if mt not in SUPPORTED_ARCHITECTURES:
            archs = d.get("architectures") or [mt]
            raise ModelLoadError(
                f"unsupported architecture {archs[0]!r} (model_type {mt!r}); supported: "
                + ", ".join(sorted(SUPPORTED_ARCHITECTURES.values())))
        # transformers >= 5 writes `rope_parameters` (theta + scaling together) instead of
        # `rope_theta` + `rope_scaling`; read both spellings.
        rp = d.get("rope_parameters") or {}
        gemma = mt == "gemma3_text"
        local_theta = None
        if gemma:
            # transformers >= 5 nests one rope_parameters per layer type; older configs write
            # rope_theta (global), rope_local_base_freq and rope_scaling (global layers only).
            local_theta = (rp.get(LOCAL) or {}).get("rope_theta", d.get("rope_local_base_freq", 10000.0))
            rp = rp.get(GLOBAL) or ({} if LOCAL in rp else rp)
        theta = d.get("rope_theta", rp.get("rope_theta", 1e6 if gemma else 10000.0))
        scaling = d.get("rope_scaling")
        if scaling is None and rp.get("rope_type", "default") != "default":
            scaling = {k: v for k, v in rp.items() if k != "rope_theta"}
        if gemma and d.get("attn_logit_softcapping") is not None:
            raise ModelLoadError("config: attention logit soft-capping (Gemma 2) is not supported")
        layer_types = d.get("layer_types")
        if gemma and layer_types is None:
            pattern = d.get("sliding_window_pattern", 6)  # older configs: every 6th layer is global
            layer_types = [LOCAL if (i + 1) % pattern else GLOBAL for i in range(d["num_hidden_layers"])]
        try:
            return cls(
                vocab_size=d["vocab_size"],
                hidden_size=d["hidden_size"],
                intermediate_size=d["intermediate_size"],
                num_hidden_layers=d["num_hidden_layers"],
                num_attention_heads=d["num_attention_heads"],
                num_key_value_heads=d.get("num_key_value_heads") or d["num_attention_heads"],
                head_dim=d.get("head_dim") or 0,
                rms_norm_eps=d.get("rms_norm_eps", 1e-5),
                rope_theta=theta,
                rope_scaling=scaling,
                max_position_embeddings=d.get("max_position_embeddings", 2048),
                tie_word_embeddings=bool(d.get("tie_word_embeddings", gemma)),
                attention_bias=d.get("attention_bias", mt == "qwen2"),
                model_type=mt,
                bos_token_id=d.get("bos_token_id"),
                eos_token_id=d.get("eos_token_id") or [],
                hidden_act=d.get("hidden_activation") or d.get("hidden_act") or "silu",
                query_pre_attn_scalar=d.get("query_pre_attn_scalar") if gemma else None,
                sliding_window=d.get("sliding_window", 4096) if gemma else None,
                layer_types=layer_types if gemma else None,
                rope_local_theta=local_theta,
                final_logit_softcapping=d.get("final_logit_softcapping") if gemma else None,
            )
        except KeyError as e:
            raise ModelLoadError(f"config.json lacks required field {e.args[0]!r}") from None

    @classmethod
    def from_file(cls, path: str | Path) -> "ModelConfig":
        path = Path(path)
        if not path.is_file():
            raise ModelLoadError(f"{path}: config.json not found")
        try:
            d = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise ModelLoadError(f"{path}: unreadable config.json ({e})") from None
        return cls.from_dict(d)

    def to_hf_dict(self) -> dict[str, Any]:
        """The config as an HF `config.json` (what `transformers` reads)."""
        d = asdict(self)
        d["architectures"] = [SUPPORTED_ARCHITECTURES[self.model_type]]
        d["eos_token_id"] = self.eos_token_id[0] if len(self.eos_token_id) == 1 else self.eos_token_id
        d["torch_dtype"] = "float32"
        if self.model_type == "qwen2":
            d.pop("attention_bias")
        if self.is_gemma3:
            d["hidden_activation"] = d.pop("hidden_act")
            d["rope_local_base_freq"] = d.pop("rope_local_theta")
        else:
            for k in _GEMMA_FIELDS:
                if k != "hidden_act":
                    d.pop(k)
        return d

    @classmethod
    def tiny(cls, **overrides: Any) -> "ModelConfig":
        """A small random-weight preset for tests: 2 layers, GQA 4:2, head_dim 16."""
        base = dict(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                    num_attention_heads=4, num_key_value_heads=2, rope_theta=10000.0,
                    max_position_embeddings=4096, tie_word_embeddings=False, eos_token_id=[2],
                    bos_token_id=1)
        base.update(overrides)
        return cls(**base)


_GEMMA_FIELDS = ("hidden_act", "query_pre_attn_scalar", "sliding_window", "layer_types", "rope_local_theta",
                 "final_logit_softcapping")
_DEFAULTS = {f.name: f.default for f in fields(ModelConfig) if f.name in _GEMMA_FIELDS}
