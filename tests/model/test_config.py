from __future__ import annotations

import json

import pytest
import torch

from acre_model.config import ModelConfig
from acre_model.errors import ModelLoadError
from acre_model.rope import inv_frequencies


def test_llama3_rope_scaling_matches_transformers():
    from transformers import LlamaConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    rs = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
          "original_max_position_embeddings": 8192}
    hf_cfg = LlamaConfig(hidden_size=4096, num_attention_heads=32, rope_theta=500000.0, rope_scaling=rs)
    ref, _ = ROPE_INIT_FUNCTIONS["llama3"](hf_cfg, "cpu")
    ours = inv_frequencies(ModelConfig.from_dict(json.loads(hf_cfg.to_json_string())))
    assert torch.allclose(ours, ref.float(), rtol=1e-6)


def test_reads_both_rope_spellings():
    base = dict(model_type="llama", vocab_size=10, hidden_size=8, intermediate_size=16, num_hidden_layers=1,
                num_attention_heads=2)
    a = ModelConfig.from_dict({**base, "rope_theta": 5.0, "rope_scaling": {"rope_type": "linear", "factor": 2.0}})
    b = ModelConfig.from_dict({**base, "rope_parameters": {"rope_theta": 5.0, "rope_type": "linear", "factor": 2.0}})
    assert a.rope_theta == b.rope_theta == 5.0
    assert a.rope_scaling["factor"] == b.rope_scaling["factor"] == 2.0
    assert a.num_key_value_heads == 2 and a.head_dim == 4


def test_qwen2_defaults_to_bias():
    c = ModelConfig.from_dict(dict(model_type="qwen2", vocab_size=10, hidden_size=8, intermediate_size=16,
                                   num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1))
    assert c.attention_bias and c.n_rep == 2


@pytest.mark.parametrize("bad, msg", [
    ({"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"]}, "unsupported architecture 'GPT2LMHeadModel'"),
    ({"model_type": "llama"}, "lacks required field"),
    ({"model_type": "llama", "vocab_size": 10, "hidden_size": 8, "intermediate_size": 16,
      "num_hidden_layers": 1, "num_attention_heads": 3, "num_key_value_heads": 2}, "not a multiple"),
    ({"model_type": "llama", "vocab_size": 10, "hidden_size": 8, "intermediate_size": 16,
      "num_hidden_layers": 1, "num_attention_heads": 2, "rope_scaling": {"rope_type": "yarn"}}, "unsupported rope_scaling"),
])
def test_bad_configs_are_clear_errors(bad, msg):
    with pytest.raises(ModelLoadError, match=msg):
        ModelConfig.from_dict(bad)
