"""Shared fixtures: the real default model (prepared once per session) and tiny random models."""
from __future__ import annotations

import os

import pytest
import torch


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def default_model_path():
    """The prepared default model folder (SmolLM2-135M-Instruct converted from the bundled GGUF)."""
    from acre_model.convert import prepare

    return prepare()


@pytest.fixture(scope="session")
def engine(default_model_path):
    from acre_model.engine import Engine

    torch.manual_seed(0)
    return Engine.from_pretrained(str(default_model_path), device="cpu")


@pytest.fixture
def acre_home(tmp_path, monkeypatch):
    """An empty $ACRE_HOME whose model cache points at the already-prepared default model."""
    from acre_model.paths import acre_home as real_home

    home = tmp_path / "acre_home"
    (home / "models").mkdir(parents=True)
    real_models = real_home() / "models"
    for p in real_models.iterdir() if real_models.exists() else []:
        if not p.name.startswith("."):
            os.symlink(p, home / "models" / p.name)
    monkeypatch.setenv("ACRE_HOME", str(home))
    return home
