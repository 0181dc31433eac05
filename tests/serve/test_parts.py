"""The serving package's small parts, in-process: config checks, error messages, streamed-text trimming."""
from __future__ import annotations

import pytest

from acre_serve.config import ConfigError, ServeConfig, is_loopback
from acre_serve.errors import field_path, invalid_fields
from acre_serve.sse import TrimmedDeltas


@pytest.mark.parametrize("host,loopback", [("127.0.0.1", True), ("localhost", True), ("::1", True),
                                           ("[::1]", True), ("127.0.0.2", True), ("0.0.0.0", False),
                                           ("::", False), ("10.1.2.3", False), ("example.org", False)])
def test_loopback(host, loopback):
    assert is_loopback(host) is loopback


def test_exposure_needs_a_key_or_insecure():
    assert ServeConfig().exposure_problem() is None
    assert "--insecure" in ServeConfig(host="0.0.0.0").exposure_problem()
    assert ServeConfig(host="0.0.0.0", api_key="k").exposure_problem() is None
    assert ServeConfig(host="0.0.0.0", insecure=True).exposure_problem() is None


@pytest.mark.parametrize("kw,needle", [({"port": 0}, "--port"), ({"workers": 0}, "--workers"),
                                       ({"max_batch": 0}, "--max-batch"), ({"tls_cert": "c"}, "--tls-key"),
                                       ({"max_open_docs": 0}, "--max-open-docs"),
                                       ({"api_key": " "}, "--api-key"), ({"max_body_bytes": 10}, "--max-body")])
def test_config_refuses(kw, needle):
    with pytest.raises(ConfigError, match=needle):
        ServeConfig(**kw)


def test_config_travels_in_the_environment(monkeypatch):
    cfg = ServeConfig(port=9001, store="unix:///x.sock", workers=3, api_key="k", metrics_dir="/tmp/m")
    monkeypatch.setenv("ACRE_SERVE_CONFIG", cfg.to_env())
    assert ServeConfig.from_env() == cfg
    monkeypatch.delenv("ACRE_SERVE_CONFIG")
    monkeypatch.setenv("ACRE_STORE", "unix:///y.sock")
    monkeypatch.setenv("ACRE_API_KEY", "k2")
    assert (ServeConfig.from_env().store, ServeConfig.from_env().api_key) == ("unix:///y.sock", "k2")


def test_error_messages_name_the_field():
    assert field_path(("questions", 3, "knobs")) == "questions[3].knobs"
    err = invalid_fields([{"type": "missing", "loc": ("body", "question"), "msg": "Field required"},
                          {"type": "extra_forbidden", "loc": ("body", "k_max"), "msg": "Extra inputs"},
                          {"type": "json_invalid", "loc": ("body", 12), "msg": "JSON decode error",
                           "ctx": {"error": "Expecting value"}}])
    assert (err.status, err.type) == (400, "invalid_request")
    assert err.message == "question: required; k_max: unknown field; body: malformed JSON (Expecting value)"


@pytest.mark.parametrize("deltas", [[" Hello", " world", " ", "!", "  "], ["  ", "\n", "a"], ["a", " ", "b", "\n"],
                                    [" ", "  "], []])
def test_trimmed_deltas_join_to_the_stripped_answer(deltas):
    trim = TrimmedDeltas()
    assert "".join(trim(d) for d in deltas) == "".join(deltas).strip()
