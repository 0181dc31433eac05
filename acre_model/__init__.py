"""ACRE model side: a Llama-family model in pure torch, the bi-layer KV cache and query-guided refill.

Heavy modules (torch) are imported on first use, so `acre --help` stays fast.
"""
from __future__ import annotations

__all__ = ["Engine", "ModelConfig", "LlamaModel", "KVCache", "AttnProbe"]


def __getattr__(name):
    if name == "Engine":
        from .engine import Engine
        return Engine
    if name == "ModelConfig":
        from .config import ModelConfig
        return ModelConfig
    if name in ("LlamaModel", "AttnProbe"):
        from . import model
        return getattr(model, name)
    if name == "KVCache":
        from .kv_cache import KVCache
        return KVCache
    raise AttributeError(name)
