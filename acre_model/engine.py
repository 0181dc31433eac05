"""The engine: one loaded model + tokenizer, and the user-facing operations on it.

`generate` is plain chat completion with the full model. `ingest` and `ask` (the bi-layer cache and
query-guided refill) live in `acre_model.acre`, attached here so that users see one object.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch

from .convert import resolve
from .documents import Answer, DocInfo, DocumentsMixin  # noqa: F401  (re-exported)
from .errors import InputError
from .generation import SamplingParams, decode
from .tokenizer import Tokenizer
from .weights import load_model


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def default_dtype(device: torch.device) -> torch.dtype:
    # On this CPU fp32 is faster than bf16; on CUDA bf16 halves memory and uses tensor cores.
    return torch.bfloat16 if device.type == "cuda" else torch.float32


@dataclass
class Generation:
    text: str
    tokens: list[int]
    n_prompt_tokens: int
    ttft_s: float
    total_s: float
    ms_per_token: float
    stopped: bool


class Engine(DocumentsMixin):
    def __init__(self, model, tokenizer: Tokenizer, path: Path):
        self.model = model
        self.tokenizer = tokenizer
        self.path = path
        self.cfg = model.cfg

    @classmethod
    def from_pretrained(cls, name_or_path: str | None = None, device: str | torch.device | None = None,
                        dtype: torch.dtype | None = None) -> "Engine":
        """Load a model folder (or the default model by name, preparing it if needed)."""
        path = resolve(name_or_path)
        dev = torch.device(device) if device is not None else default_device()
        model = load_model(path, device=dev, dtype=dtype or default_dtype(dev))
        return cls(model, Tokenizer.from_folder(path), path)

    @property
    def device(self) -> torch.device:
        return self.model.device

    @property
    def max_context(self) -> int:
        return self.cfg.max_position_embeddings

    def check_length(self, n_tokens: int, max_new_tokens: int, what: str = "prompt") -> None:
        if n_tokens + max_new_tokens > self.max_context:
            raise InputError(
                f"{what} is {n_tokens} tokens; with {max_new_tokens} new tokens that exceeds the model's "
                f"context of {self.max_context} tokens")

    def generate(self, prompt: str, max_new_tokens: int = 128, temperature: float = 0.0,
                 top_p: float = 1.0, seed: int | None = None, chat: bool = True) -> Generation:
        if not prompt or not prompt.strip():
            raise InputError("empty prompt")
        params = SamplingParams(max_new_tokens, temperature, top_p, seed)
        ids = self.tokenizer.chat_ids(prompt) if chat else self.tokenizer.encode(prompt)
        self.check_length(len(ids), max_new_tokens)
        t0 = time.perf_counter()
        cache = self.model.new_cache(capacity=len(ids) + max_new_tokens)
        logits = self.model.prefill(torch.tensor(ids), cache)
        ttft = time.perf_counter() - t0
        d = decode(self.model, cache, logits, params, self.tokenizer.stop_ids)
        return Generation(self.tokenizer.decode(d.tokens), d.tokens, len(ids), ttft,
                          time.perf_counter() - t0, d.ms_per_token, d.stopped)
