"""Fixtures of the serving tests: the tiny model, a real daemon, and an in-process engine to compare with."""
from __future__ import annotations

import pytest

from tests.model.tiny import make_tiny_folder
from tests.store.support import Daemon, short_tmp


@pytest.fixture(scope="session")
def tiny_folder(tmp_path_factory, default_model_path):
    return make_tiny_folder(tmp_path_factory.mktemp("serve") / "model", default_model_path, seed=21)


def _running_daemon(data):
    d = Daemon(data=str(data), backend="lmdb", sock_dir=short_tmp()).start()
    yield d
    d.stop()


@pytest.fixture(scope="module")
def daemon(tmp_path_factory):
    """A daemon shared by a module's servers."""
    yield from _running_daemon(tmp_path_factory.mktemp("data"))


@pytest.fixture
def lone_daemon(tmp_path):
    """A daemon of one test's own (say, one that the test kills)."""
    yield from _running_daemon(tmp_path / "data")


@pytest.fixture(scope="module")
def local(tiny_folder, daemon):
    """(engine, store client) in this process, on the same daemon: what the server's answers must equal."""
    from acre_model.engine import Engine

    eng = Engine.from_pretrained(str(tiny_folder), device="cpu")
    store = daemon.client()
    yield eng, store
    store.close()


def local_answer(local, doc_id: str | list[str], body: dict) -> dict:
    """Engine.ask with the fields of an /v1/ask body."""
    eng, store = local
    a = eng.ask(doc_id, body["question"], policy=body.get("policy", "acre"), store=store,
                answer_prefix=body.get("answer_prefix", ""), max_new_tokens=body.get("max_new_tokens", 64),
                temperature=body.get("temperature", 0.0), top_p=body.get("top_p", 1.0),
                sampling_seed=body.get("seed"), stop=body.get("stop", ()), reselect=body.get("reselect", 0),
                **body.get("knobs", {}))
    return a.to_dict()
