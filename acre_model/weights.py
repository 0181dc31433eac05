"""Load an HF-style model folder (config.json, model.safetensors or a sharded index) into LlamaModel."""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from .config import ModelConfig
from .errors import ModelLoadError
from .model import LlamaModel


def _weight_files(folder: Path) -> list[Path]:
    single = folder / "model.safetensors"
    index = folder / "model.safetensors.index.json"
    if single.is_file():
        return [single]
    if index.is_file():
        try:
            wm = json.loads(index.read_text())["weight_map"]
        except (OSError, json.JSONDecodeError, KeyError) as e:
            raise ModelLoadError(f"{index}: unreadable shard index ({e})") from None
        files = sorted({folder / f for f in wm.values()})
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            raise ModelLoadError(f"{folder}: missing weight shard(s): {', '.join(missing)}")
        return files
    raise ModelLoadError(f"{folder}: no model.safetensors or model.safetensors.index.json")


def load_state_dict(folder: Path) -> dict[str, torch.Tensor]:
    sd: dict[str, torch.Tensor] = {}
    for f in _weight_files(folder):
        try:
            sd.update(load_file(str(f)))
        except (SafetensorError, OSError, ValueError, RuntimeError) as e:
            raise ModelLoadError(f"{f}: corrupt or truncated safetensors file ({e})") from None
    return sd


def load_model(folder: str | Path, device: str | torch.device = "cpu",
               dtype: torch.dtype = torch.float32) -> LlamaModel:
    folder = Path(folder)
    if not folder.is_dir():
        raise ModelLoadError(f"model folder not found: {folder}")
    cfg = ModelConfig.from_file(folder / "config.json")
    sd = load_state_dict(folder)
    with torch.device("meta"):
        model = LlamaModel(cfg)
    expected = {k for k in model.state_dict()}
    if cfg.tie_word_embeddings:
        sd.pop("lm_head.weight", None)
    missing = sorted(expected - set(sd))
    if missing:
        more = f" (+{len(missing) - 3} more)" if len(missing) > 3 else ""
        raise ModelLoadError(f"{folder}: weights missing {', '.join(missing[:3])}{more}")
    for k in expected:
        want = tuple(model.state_dict()[k].shape)
        if tuple(sd[k].shape) != want:
            raise ModelLoadError(f"{folder}: weight {k} has shape {tuple(sd[k].shape)}, config wants {want}")
    sd = {k: v.to(device=device, dtype=dtype) for k, v in sd.items() if k in expected}
    model.load_state_dict(sd, assign=True)
    return model.finalize()
