"""RoPE tables are shared by a server's request threads: growing them must never expose a grown cos
beside an old sin (a worker once answered 500 'index is out of bounds for dimension with size 0' when its
first concurrent questions grew the tables together)."""
from __future__ import annotations

import sys
import threading
from concurrent.futures import ThreadPoolExecutor

import torch

from acre_model.config import ModelConfig
from acre_model.rope import Rope

CFG = ModelConfig(vocab_size=32, hidden_size=64, intermediate_size=64, num_hidden_layers=1,
                  num_attention_heads=4, num_key_value_heads=4)


def test_concurrent_first_calls_on_fresh_tables_all_succeed_and_agree():
    want_cos, want_sin = Rope(CFG).cos_sin(torch.arange(5000), torch.float32)
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as the interpreter allows
    try:
        for _ in range(40):
            rope, start = Rope(CFG), threading.Barrier(8)

            def call(i, rope=rope, start=start):
                start.wait()
                pos = torch.tensor([(i + 1) * 600 - 1, i])  # each thread needs a larger table
                return pos, rope.cos_sin(pos, torch.float32)

            with ThreadPoolExecutor(8) as pool:  # an error in any call is raised here
                got = list(pool.map(call, range(8)))
            for pos, (cos, sin) in got:
                assert torch.equal(cos, want_cos[pos]) and torch.equal(sin, want_sin[pos])
    finally:
        sys.setswitchinterval(old)
