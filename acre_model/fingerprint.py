"""Model fingerprint: identifies a model by its config and weights, not by its file path.

A document's KV is only meaningful for the model that made it, so every document records the
fingerprint and a worker refuses documents whose fingerprint differs from its own. Hashing all
weights costs seconds for big models; a strided sample of every tensor (plus names, shapes, dtypes
and the config) identifies a checkpoint just as well in practice and costs milliseconds.
"""
from __future__ import annotations

import hashlib
import json
import torch

SAMPLES_PER_TENSOR = 4096


def model_fingerprint(model) -> str:
    h = hashlib.sha256()
    h.update(json.dumps(model.cfg.identity(), sort_keys=True).encode())
    for name, t in sorted(model.state_dict().items()):
        flat = t.detach().reshape(-1)
        step = max(1, flat.numel() // SAMPLES_PER_TENSOR)
        sample = flat[::step][:SAMPLES_PER_TENSOR].float().cpu().contiguous()
        h.update(f"{name}:{tuple(t.shape)}".encode())
        # float32 of the sample, so fp32 and bf16 copies of one checkpoint hash alike; the dtype is
        # checked separately (it is part of the document's layout).
        h.update(sample.to(torch.bfloat16).float().numpy().tobytes())
    return h.hexdigest()[:32]
