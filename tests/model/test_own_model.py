"""Models a user already has: a hub id in the local Hugging Face cache (offline), and chat templates
as newer HF models ship them (chat_template.jinja) or not at all."""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pytest

from tests.helpers import assert_clean_error, run_acre

MAIN = "0123456789abcdef0123456789abcdef01234567"  # the commit refs/main names
OLD = "fedcba9876543210fedcba9876543210fedcba98"  # an older cached commit, also tagged v1
PROMPT = "What is the capital of France?"


def _link_files(src, dst, names=None) -> None:
    """`dst` holds links to `src`'s files, as a hub snapshot holds links into blobs/."""
    dst.mkdir(parents=True)
    for p in src.iterdir():
        if p.is_file() and (names is None or p.name in names):
            os.symlink(p, dst / p.name)


@pytest.fixture
def hf_cache(tmp_path, default_model_path, monkeypatch):
    """A hub cache holding the default model as `acme/tiny` (two snapshots), named by HF_HUB_CACHE."""
    cache = tmp_path / "hub"
    repo = cache / "models--acme--tiny"
    for commit in (MAIN, OLD):
        _link_files(default_model_path, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(MAIN)  # huggingface_hub writes no newline
    (repo / "refs" / "v1").write_text(OLD + "\n")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    return cache


def test_hub_id_loads_and_generates_like_the_folder(hf_cache, engine):
    from acre_model.engine import Engine

    eng = Engine.from_pretrained("acme/tiny", device="cpu")
    assert eng.path == hf_cache / "models--acme--tiny" / "snapshots" / MAIN
    assert eng.fingerprint == engine.fingerprint
    assert eng.generate(PROMPT, max_new_tokens=12).tokens == engine.generate(PROMPT, max_new_tokens=12).tokens


@pytest.mark.parametrize("name,commit", [("acme/tiny", MAIN), ("acme/tiny@main", MAIN), (f"acme/tiny@{OLD}", OLD),
                                         ("acme/tiny@v1", OLD), (f"acme/tiny@{MAIN}", MAIN)])
def test_revision(hf_cache, name, commit):
    from acre_model.convert import prepare, resolve

    snapshot = hf_cache / "models--acme--tiny" / "snapshots" / commit
    assert resolve(name) == snapshot
    assert prepare(name) == snapshot  # `acre model prepare` of a cached model: nothing to do, its path


def test_unknown_revision_lists_what_is_cached(hf_cache):
    from acre_model.convert import resolve
    from acre_model.errors import ModelLoadError

    with pytest.raises(ModelLoadError) as e:
        resolve("acme/tiny@v2")
    msg = str(e.value)
    assert "'v2'" in msg and str(hf_cache / "models--acme--tiny") in msg
    assert "main, v1" in msg and OLD in msg


@pytest.mark.parametrize("name", ["acme/nope", "acme/nope@main", "nope"])
def test_unknown_hub_id_names_the_cache_path(hf_cache, name):
    from acre_model.convert import resolve
    from acre_model.errors import ModelLoadError

    with pytest.raises(ModelLoadError, match="unknown model") as e:
        resolve(name)
    assert str(hf_cache / ("models--" + name.split("@")[0].replace("/", "--"))) in str(e.value)
    assert "never downloads" in str(e.value)


def test_cache_location_follows_huggingface_hub(tmp_path, monkeypatch):
    from acre_model.hf_cache import hub_cache_dir

    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_HOME", "XDG_CACHE_HOME"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert hub_cache_dir() == tmp_path / ".cache" / "huggingface" / "hub"
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    assert hub_cache_dir() == tmp_path / "hf" / "hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "elsewhere"))
    assert hub_cache_dir() == tmp_path / "elsewhere"


def test_cli_generate_with_hub_id(hf_cache):
    p = run_acre("generate", PROMPT, "--model", "acme/tiny", "--max-new-tokens", "12", "--json",
                 env_extra={"HF_HUB_CACHE": str(hf_cache)})
    assert p.returncode == 0, p.stderr
    assert "Paris" in json.loads(p.stdout)["text"]
    assert_clean_error(run_acre("generate", "hi", "--model", "acme/nope", env_extra={"HF_HUB_CACHE": str(hf_cache)}),
                       str(hf_cache / "models--acme--nope"))


# ---- chat templates ------------------------------------------------------------------------------


def _tokenizer_copy(tmp_path, default_model_path, template) -> Path:
    """The default model's tokenizer files, with tokenizer_config.json's chat_template set to `template`
    (None: removed)."""
    d = tmp_path / "tok"
    _link_files(default_model_path, d, names={"tokenizer.json"})
    cfg = json.loads((default_model_path / "tokenizer_config.json").read_text())
    cfg.pop("chat_template")
    if template is not None:
        cfg["chat_template"] = template
    (d / "tokenizer_config.json").write_text(json.dumps(cfg))
    return d


@pytest.fixture
def original(default_model_path):
    from acre_model.tokenizer import Tokenizer

    tok = Tokenizer.from_folder(default_model_path)
    assert tok.has_chat_template
    return tok


def _template(default_model_path) -> str:
    return json.loads((default_model_path / "tokenizer_config.json").read_text())["chat_template"]


def test_chat_template_jinja_file(tmp_path, default_model_path, original):
    from acre_model.tokenizer import Tokenizer

    d = _tokenizer_copy(tmp_path, default_model_path, None)
    (d / "chat_template.jinja").write_text(_template(default_model_path))
    tok = Tokenizer.from_folder(d)
    assert tok.has_chat_template
    assert tok.chat_ids(PROMPT) == original.chat_ids(PROMPT)
    assert tok.prompt_ids("A document.", "A question?") == original.prompt_ids("A document.", "A question?")


def test_named_chat_templates_in_config(tmp_path, default_model_path, original):
    """tokenizer_config.json may hold a list of named templates; "default" is the chat template."""
    from acre_model.tokenizer import Tokenizer

    named = [{"name": "tool_use", "template": "{{ 'tools' }}"},
             {"name": "default", "template": _template(default_model_path)}]
    tok = Tokenizer.from_folder(_tokenizer_copy(tmp_path, default_model_path, named))
    assert tok.chat_ids(PROMPT) == original.chat_ids(PROMPT)


def test_no_chat_template_warns_once(tmp_path, default_model_path, caplog):
    from acre_model.tokenizer import Tokenizer

    d = _tokenizer_copy(tmp_path, default_model_path, None)
    with caplog.at_level(logging.WARNING, logger="acre_model.tokenizer"):
        tok = Tokenizer.from_folder(d)
        tok.chat_ids(PROMPT)
        tok.chat_ids(PROMPT)
    assert not tok.has_chat_template
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "no chat template" in warnings[0].getMessage() and str(d) in warnings[0].getMessage()
