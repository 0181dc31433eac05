"""The converted default model (SmolLM2-135M-Instruct from the bundled GGUF) against transformers."""
from __future__ import annotations

import json
import os
import time

import pytest
import torch

TEXTS = [
    "In 2024, 12345 people visited the museum; 3.14159 is pi.",
    "héllo wörld — naïve café, 你好, こんにちは, emoji 🙂🚀\n\n  tabs\tand   spaces  \n",
    "def f(x):\n    return x**2  # comment\n\n\nclass A: pass",
    "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n",
    "One of the special magic numbers for cooperative-elephant is: 4821937.",
    "   leading spaces and trailing   ",
]


@pytest.fixture(scope="module")
def hf_gguf():
    """transformers' own GGUF loader (dequantize + reverse permutation) on the bundled file."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from acre_model.convert import bundled_gguf

    g = bundled_gguf()
    model = AutoModelForCausalLM.from_pretrained(str(g.parent), gguf_file=g.name, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(str(g.parent), gguf_file=g.name)
    return model.eval(), tok


def test_converted_weights_equal_transformers_gguf_loader(default_model_path, hf_gguf):
    from acre_model.weights import load_state_dict

    ours = load_state_dict(default_model_path)
    ref = hf_gguf[0].state_dict()
    assert set(ours) == set(ref) - {"lm_head.weight"}  # tied embeddings
    for k, v in ours.items():
        assert torch.equal(v, ref[k]), k


def test_logits_match_transformers_on_long_prompt(engine, default_model_path):
    from transformers import LlamaForCausalLM

    hf = LlamaForCausalLM.from_pretrained(str(default_model_path), dtype=torch.float32).eval()
    prompt = " ".join(TEXTS * 6)
    ids = engine.tokenizer.chat_ids(prompt)
    assert len(ids) >= 200
    with torch.no_grad():
        ref = hf(torch.tensor([ids])).logits[0]
    got = engine.model(torch.tensor(ids), engine.model.new_cache(), all_logits=True)
    assert (got - ref).abs().max().item() < 1e-3
    assert torch.equal(got[-1].argmax(), ref[-1].argmax())


@pytest.mark.parametrize("text", TEXTS)
def test_tokenization_identical_to_reference(engine, hf_gguf, text):
    ref = hf_gguf[1].encode(text, add_special_tokens=False)
    assert engine.tokenizer.encode(text) == ref
    assert engine.tokenizer.decode(ref, skip_special=False) == hf_gguf[1].decode(ref)


def test_digits_are_single_tokens(engine):
    ids = engine.tokenizer.encode("4821937")
    assert len(ids) == 7


def test_chat_template_matches_reference(engine, hf_gguf):
    msgs = [{"role": "user", "content": "What is 2+2?"}]
    ref = hf_gguf[1].apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    ours = engine.tokenizer.apply_chat_template(msgs)
    assert ours == ref
    assert ours.startswith("<|im_start|>system\n")  # the template inserts the default system prompt
    ids = engine.tokenizer.chat_ids("What is 2+2?")
    assert ids[0] == engine.cfg.bos_token_id  # the template itself starts with BOS; none added twice
    assert ids.count(engine.cfg.bos_token_id) == 3


def test_split_chat_is_the_concatenation(engine):
    """Document and question ids, concatenated, are the chat prompt of document + question."""
    tok = engine.tokenizer
    doc, q = "Some document text.", "\nWhat is it about?"
    parts = tok.split_chat(doc, q, "It is about")
    full = tok.encode(tok.apply_chat_template([{"role": "user", "content": doc + q}]) + "It is about")
    assert parts.prefix + parts.suffix == full
    assert tok.document_ids(doc) == parts.prefix


def test_prepare_is_idempotent_and_instant(default_model_path):
    from acre_model.convert import prepare

    t0 = time.perf_counter()
    again = prepare()
    assert again == default_model_path
    assert time.perf_counter() - t0 < 1.0
    stamp = json.loads((default_model_path / "prepared.json").read_text())
    assert stamp["format"] >= 1


def test_generate_answers_paris(engine):
    g = engine.generate("What is the capital of France?", max_new_tokens=24)
    assert "Paris" in g.text
    assert g.stopped


def test_sampling_is_seeded(engine):
    a = engine.generate("Write a word.", max_new_tokens=8, temperature=0.9, top_p=0.9, seed=7)
    b = engine.generate("Write a word.", max_new_tokens=8, temperature=0.9, top_p=0.9, seed=7)
    assert a.tokens == b.tokens
