"""The forward pass against transformers and against an independent naive reference."""
from __future__ import annotations

import torch

from acre_model.model import AttnProbe
from acre_model.rope import inv_frequencies
from tests.model.reference import naive_forward


def _hf_logits(hf, ids):
    with torch.no_grad():
        return hf(torch.tensor([ids])).logits[0].float()


def _ours_all(model, ids):
    cache = model.new_cache()
    return model(torch.tensor(ids), cache, all_logits=True)


def test_logits_match_transformers(tiny_pair):
    hf, ours, _ = tiny_pair
    # Long enough that llama3 RoPE scaling (original context 256) matters.
    ids = torch.randint(0, 256, (300,), generator=torch.Generator().manual_seed(0)).tolist()
    ref = _hf_logits(hf, ids)
    got = _ours_all(ours, ids)
    assert got.shape == ref.shape
    assert (got - ref).abs().max().item() < 1e-3


def test_naive_reference_matches_transformers(tiny_pair):
    hf, ours, _ = tiny_pair
    ids = torch.randint(0, 256, (40,), generator=torch.Generator().manual_seed(1))
    t = len(ids)
    sd = {k: v for k, v in hf.state_dict().items()}
    ref = naive_forward(sd, ours.cfg, ids, torch.arange(t), torch.ones(t, t, dtype=torch.bool).tril(),
                        inv_frequencies(ours.cfg))
    assert (ref - _hf_logits(hf, ids.tolist())).abs().max().item() < 1e-3


def test_prefill_then_decode_equals_full_forward(tiny_llama):
    _, m, _ = tiny_llama
    ids = torch.randint(0, 256, (50,), generator=torch.Generator().manual_seed(2))
    full = m(ids, m.new_cache(), all_logits=True)
    cache = m.new_cache(capacity=4)  # forces several buffer growths
    out = [m.prefill(ids[:30], cache, chunk_size=30)]
    for i in range(30, 50):
        out.append(m(ids[i:i + 1], cache))
    step = torch.stack(out[1:])
    assert (out[0] - full[29]).abs().max() < 1e-4
    assert (step - full[30:]).abs().max() < 1e-4


def test_chunked_prefill_equals_one_shot(tiny_llama):
    _, m, _ = tiny_llama
    ids = torch.randint(0, 256, (203,), generator=torch.Generator().manual_seed(3))
    c1, c2 = m.new_cache(), m.new_cache()
    a = m.prefill(ids, c1, chunk_size=1000)
    b = m.prefill(ids, c2, chunk_size=17)
    assert (a - b).abs().max() < 1e-4
    for i in range(m.cfg.num_hidden_layers):
        ka, va, pa = c1.view(i)
        kb, vb, pb = c2.view(i)
        assert torch.equal(pa, pb)
        assert (ka - kb).abs().max() < 1e-4 and (va - vb).abs().max() < 1e-4


def test_subset_permuted_cache_equals_masked_reference(tiny_llama):
    """A cache assembled from stored pre-RoPE entries (a permuted subset of a prefill) gives the same
    logits as the naive reference in which the query attends only to that subset (RoPE applied once)."""
    hf, m, _ = tiny_llama
    g = torch.Generator().manual_seed(4)
    n = 60
    ids = torch.randint(0, 256, (n + 1,), generator=g)
    cache = m.new_cache(keep_raw=True)
    m.prefill(ids[:n], cache)
    keep = torch.randperm(n, generator=g)[:25]  # a subset, in a scrambled order
    keys = [cache.raw_keys(i)[:, keep] for i in range(m.cfg.num_hidden_layers)]
    vals = [cache.view(i)[1][:, keep] for i in range(m.cfg.num_hidden_layers)]
    from acre_model.kv_cache import KVCache

    sub = KVCache.from_entries(m.rope, keys, vals, keep)
    got = m(ids[n:], sub, torch.tensor([n]))
    mask = torch.ones(n + 1, n + 1, dtype=torch.bool).tril()
    mask[n, :n] = False
    mask[n, keep] = True
    ref = naive_forward(hf.state_dict(), m.cfg, ids, torch.arange(n + 1), mask, inv_frequencies(m.cfg))
    assert (got - ref[n]).abs().max().item() < 1e-3
    # and it differs from full attention, so the subset really mattered
    full = m(ids, m.new_cache(), all_logits=True)[n]
    assert (full - got).abs().max().item() > 1e-3


def test_assembled_cache_at_original_positions_equals_full(tiny_llama):
    _, m, _ = tiny_llama
    ids = torch.randint(0, 256, (81,), generator=torch.Generator().manual_seed(5))
    cache = m.new_cache(keep_raw=True)
    m.prefill(ids[:80], cache)
    L = m.cfg.num_hidden_layers
    from acre_model.kv_cache import KVCache

    rebuilt = KVCache.from_entries(m.rope, [cache.raw_keys(i) for i in range(L)],
                                   [cache.view(i)[1] for i in range(L)], torch.arange(80))
    for i in range(L):  # RoPE applied once: the rebuilt rotated keys equal the prefill's
        assert (rebuilt.view(i)[0] - cache.view(i)[0]).abs().max() < 1e-5
    a = m(ids[80:], rebuilt)
    b = m(ids, m.new_cache(), all_logits=True)[80]
    assert (a - b).abs().max() < 1e-4


def test_probe_probabilities_and_queries(tiny_llama):
    hf, m, _ = tiny_llama
    ids = torch.randint(0, 256, (30,), generator=torch.Generator().manual_seed(6))
    cache = m.new_cache()
    m.prefill(ids[:20], cache)
    probe = AttnProbe(layers=[1], rows=slice(2, 10), want_queries=True)
    m(ids[20:], cache, probe=probe)
    p = probe.probs[1]
    assert p.shape == (m.cfg.num_attention_heads, 8, 30)
    assert torch.allclose(p.sum(-1), torch.ones(p.shape[:2]), atol=1e-5)
    # row j (new token 2+j) may not see tokens after itself
    for j in range(8):
        assert p[:, j, 20 + 2 + j + 1:].abs().sum() == 0
    assert probe.queries[1].shape == (m.cfg.num_attention_heads, 8, m.cfg.head_dim)
    # HF eager attentions agree with ours on the last query row
    with torch.no_grad():
        hf.config._attn_implementation = "eager"
        att = hf(ids[None], output_attentions=True).attentions[1][0]
        hf.config._attn_implementation = "sdpa"
    assert (att[:, 22:30] - p).abs().max() < 1e-4


def test_cache_grows_without_copying_per_token(tiny_llama):
    _, m, _ = tiny_llama
    cache = m.new_cache(capacity=8)
    m.prefill(torch.arange(5), cache)
    buffers = set()
    for t in range(200):
        m(torch.tensor([t % 200]), cache)
        buffers.add(cache.layers[0].k.data_ptr())
    # doubling growth: ~log2(205/8) reallocations, not one per token
    assert len(buffers) <= 6


def test_probe_with_last_layer_records_the_same_and_stops(tiny_llama):
    """A probe-only forward that stops at the last probed layer records exactly what a full forward does,
    and touches no later layer of the cache (pass 1 runs this way)."""
    _, m, _ = tiny_llama
    ids = torch.randint(0, 256, (30,), generator=torch.Generator().manual_seed(7))
    full_cache, short_cache = m.new_cache(), m.new_cache()
    m.prefill(ids[:20], full_cache)
    m.prefill(ids[:20], short_cache)
    full = AttnProbe(layers=[0], want_queries=True)
    short = AttnProbe(layers=[0], want_queries=True)
    assert m(ids[20:], full_cache, probe=full) is not None
    assert m(ids[20:], short_cache, probe=short, last_layer=0) is None
    assert torch.equal(full.queries[0], short.queries[0])
    assert torch.equal(full.probs[0], short.probs[0])
    assert short_cache.length(0) == 30
    assert short_cache.length(1) == 20  # the later layer never ran


def test_forward_batch_equals_each_sequence_alone(tiny_llama):
    """Sequences of different lengths over different caches in one forward give each the same logits as
    a batch of one (bitwise: rows are padded to blocks of 4), and agree with `forward`; a sequence whose
    hook fails leaves the batch and the others are unaffected."""
    from acre_model.model import BatchItem

    _, m, _ = tiny_llama
    g = torch.Generator().manual_seed(11)
    contexts = [torch.randint(0, 256, (n,), generator=g) for n in (17, 40, 5)]
    news = [torch.randint(0, 256, (n,), generator=g) for n in (7, 1, 13)]

    def items(hooks=(None, None, None)):
        out = []
        for ctx, new, hook in zip(contexts, news, hooks):
            cache = m.new_cache()
            m.prefill(ctx, cache)
            out.append(BatchItem(new, cache, torch.arange(len(ctx), len(ctx) + len(new)), hook))
        return out

    batched = m.forward_batch(items())
    for j, (it, fresh) in enumerate(zip(items(), items())):
        alone = m.forward_batch([it])[0]
        assert torch.equal(alone, batched[j])
        ref = m(fresh.ids, fresh.cache, fresh.positions)
        assert (ref - alone).abs().max() < 1e-4

    def broken(layer, cache):
        if layer == 1:
            raise RuntimeError("refill failed")

    got = m.forward_batch(items((None, broken, None)))
    assert isinstance(got[1], RuntimeError)
    assert torch.equal(got[0], batched[0]) and torch.equal(got[2], batched[2])
