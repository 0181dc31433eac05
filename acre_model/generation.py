"""Token selection and the decode loop (greedy by default; temperature / top-p sampling as options)."""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from .errors import InputError
from .kv_cache import KVCache


@dataclass
class SamplingParams:
    max_new_tokens: int = 128
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    seed: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 1:
            raise InputError(f"max_new_tokens must be an integer >= 1, got {self.max_new_tokens!r}")
        if not isinstance(self.temperature, (int, float)) or self.temperature < 0:
            raise InputError(f"temperature must be a number >= 0, got {self.temperature!r}")
        if not isinstance(self.top_p, (int, float)) or not 0 < self.top_p <= 1:
            raise InputError(f"top_p must be in (0, 1], got {self.top_p!r}")
        if self.seed is not None and not isinstance(self.seed, int):
            raise InputError(f"seed must be an integer, got {self.seed!r}")


def select_token(logits: torch.Tensor, p: SamplingParams, gen: torch.Generator | None) -> int:
    """logits [vocab] -> token id."""
    if p.temperature == 0:
        return int(logits.argmax())
    probs = torch.softmax(logits.float() / p.temperature, dim=-1)
    if p.top_p < 1.0:
        sp, si = probs.sort(descending=True)
        keep = sp.cumsum(-1) - sp < p.top_p  # always keeps the most likely token
        sp = sp * keep
        return int(si[torch.multinomial(sp / sp.sum(), 1, generator=gen)])
    return int(torch.multinomial(probs, 1, generator=gen))


@dataclass
class Decoded:
    tokens: list[int]
    stopped: bool  # ended on a stop token (else: max_new_tokens)
    decode_s: float = 0.0
    step_s: list[float] = field(default_factory=list)

    @property
    def ms_per_token(self) -> float:
        return 1000 * self.decode_s / max(1, len(self.step_s))


def decode(model, cache: KVCache, first_logits: torch.Tensor, p: SamplingParams,
           stop_ids: list[int]) -> Decoded:
    """Generate from `first_logits` (the prefill's last position), appending to `cache`."""
    gen = None
    if p.temperature > 0:
        gen = torch.Generator(device="cpu")
        gen.manual_seed(p.seed if p.seed is not None else torch.seed())
    stop = set(stop_ids)
    out: list[int] = []
    steps: list[float] = []
    logits = first_logits
    t_all = time.perf_counter()
    cache.reserve(p.max_new_tokens)
    for _ in range(p.max_new_tokens):
        tok = select_token(logits.cpu(), p, gen)
        if tok in stop:
            return Decoded(out, True, time.perf_counter() - t_all, steps)
        out.append(tok)
        if len(out) == p.max_new_tokens:
            break
        t0 = time.perf_counter()
        logits = model(torch.tensor([tok]), cache)
        steps.append(time.perf_counter() - t0)
    return Decoded(out, False, time.perf_counter() - t_all, steps)
