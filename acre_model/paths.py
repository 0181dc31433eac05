"""Where ACRE keeps things: `$ACRE_HOME` (default `~/.cache/acre`)."""
from __future__ import annotations

import os
from pathlib import Path

DEFAULT_MODEL = "SmolLM2-135M-Instruct"


def acre_home() -> Path:
    return Path(os.environ.get("ACRE_HOME") or Path.home() / ".cache" / "acre")


def models_dir() -> Path:
    return acre_home() / "models"
