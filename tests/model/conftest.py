"""Tiny random HF models (Llama with llama3 RoPE scaling, Qwen2 with q/k/v bias, Mistral), saved as
HF folders with transformers so that acre_model loads exactly what transformers wrote."""
from __future__ import annotations

import pytest
import torch

from tests.model.tiny import spread_weights

TINY = dict(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096)


def _make(kind: str, path):
    import transformers as tf

    torch.manual_seed(1234)
    if kind == "llama":
        cfg = tf.LlamaConfig(**TINY, rope_theta=10000.0, tie_word_embeddings=False,
                             rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                           "high_freq_factor": 4.0, "original_max_position_embeddings": 256})
        m = tf.LlamaForCausalLM(cfg)
    elif kind == "qwen2":
        cfg = tf.Qwen2Config(**TINY, rope_theta=1e6, tie_word_embeddings=True)
        m = tf.Qwen2ForCausalLM(cfg)
    elif kind == "mistral":
        cfg = tf.MistralConfig(**TINY, rope_theta=1e6, tie_word_embeddings=False, sliding_window=None)
        m = tf.MistralForCausalLM(cfg)
    else:
        raise ValueError(kind)
    # Random init is small; scale weights up so that attention is far from uniform and bugs show.
    spread_weights(m, "bias", 0.5)
    m.save_pretrained(str(path), safe_serialization=True)
    return m


@pytest.fixture(scope="session", params=["llama", "qwen2", "mistral"])
def tiny_pair(request, tmp_path_factory):
    """(transformers model, our model, folder) for each tiny architecture."""
    from acre_model.weights import load_model

    path = tmp_path_factory.mktemp(f"tiny-{request.param}")
    hf = _make(request.param, path)
    return hf, load_model(path), path


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory):
    from acre_model.weights import load_model

    path = tmp_path_factory.mktemp("tiny-llama-only")
    hf = _make("llama", path)
    return hf, load_model(path), path
