"""Model configuration for the Llama family, read from a Hugging Face `config.json`.

Covers Llama 2/3 (including `rope_scaling` type `llama3`), Mistral and Qwen2 (q/k/v bias), with tied or
untied embeddings and grouped-query attention.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .errors import ModelLoadError

SUPPORTED_ARCHITECTURES = {
    "llama": "LlamaForCausalLM",
    "mistral": "MistralForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
}


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
        theta = d.get("rope_theta", rp.get("rope_theta", 10000.0))
        scaling = d.get("rope_scaling")
        if scaling is None and rp.get("rope_type", "default") != "default":
            scaling = {k: v for k, v in rp.items() if k != "rope_theta"}
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
                tie_word_embeddings=bool(d.get("tie_word_embeddings", False)),
                attention_bias=d.get("attention_bias", mt == "qwen2"),
                model_type=mt,
                bos_token_id=d.get("bos_token_id"),
                eos_token_id=d.get("eos_token_id") or [],
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
        d["hidden_act"] = "silu"
        d["torch_dtype"] = "float32"
        if self.model_type == "qwen2":
            d.pop("attention_bias")
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
