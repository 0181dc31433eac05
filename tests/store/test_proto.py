"""The committed generated code matches proto/acre/store/v1/store.proto (regenerate: `make proto`)."""
from __future__ import annotations

import importlib.metadata
import os
import re

import pytest

from acre_store import gen_proto
from acre_store._proto import store_pb2

from .support import ROOT

grpc_tools = pytest.importorskip("grpc_tools")


def test_committed_descriptor_matches_proto():
    from google.protobuf import descriptor_pb2

    committed = descriptor_pb2.FileDescriptorProto()
    committed.ParseFromString(store_pb2.DESCRIPTOR.serialized_pb)
    assert gen_proto.descriptor() == committed, "acre_store/_proto is stale: run `make proto`"


def test_committed_code_is_what_the_generator_writes():
    with open(os.path.join(gen_proto.OUT_DIR, "store_pb2.py")) as f:
        committed_version = re.search(r"Protobuf Python Version: (\S+)", f.read()).group(1)
    fresh = gen_proto.generate()
    fresh_version = re.search(r"Protobuf Python Version: (\S+)", fresh["store_pb2.py"]).group(1)
    if fresh_version != committed_version:
        pytest.skip(f"grpcio-tools {importlib.metadata.version('grpcio-tools')} emits protobuf {fresh_version} "
                    f"code, the committed copy is {committed_version}: only the descriptor is compared")
    for name, text in fresh.items():
        with open(os.path.join(gen_proto.OUT_DIR, name)) as f:
            # the gRPC stub stamps the generator's own version: a newer grpcio-tools writes the same code
            # under another stamp (test_the_grpc_stamp_is_within_the_declared_grpcio_range checks the stamp)
            assert _unstamped(f.read()) == _unstamped(text), f"{name} is stale: run `make proto`"
    assert "from . import store_pb2" in fresh["store_pb2_grpc.py"]


_STAMP = re.compile(r"^GRPC_GENERATED_VERSION = '([^']+)'$", re.M)


def _unstamped(code: str) -> str:
    return _STAMP.sub("GRPC_GENERATED_VERSION = ...", code)


def test_the_grpc_stamp_is_within_the_declared_grpcio_range():
    """The committed stub refuses to import under a grpcio older than its stamp, so the package must not
    admit one: pyproject's grpcio floor is at least the stamp."""
    import tomllib

    from packaging.requirements import Requirement
    from packaging.version import Version

    with open(os.path.join(gen_proto.OUT_DIR, "store_pb2_grpc.py")) as f:
        stamp = Version(_STAMP.search(f.read()).group(1))
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        deps = [Requirement(d) for d in tomllib.load(f)["project"]["dependencies"]]
    (grpcio,) = [r for r in deps if r.name == "grpcio"]
    floors = [Version(s.version) for s in grpcio.specifier if s.operator == ">="]
    assert floors and min(floors) >= stamp, f"pyproject admits {grpcio}, the stub needs grpcio>={stamp}"
