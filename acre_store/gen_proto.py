"""Regenerates acre_store/_proto/ from proto/acre/store/v1/store.proto: `python -m acre_store.gen_proto`.

The generated modules are committed (so installing needs no grpcio-tools); tests/store/test_proto.py
fails when they are stale. grpc's generated code imports its messages by absolute proto path
(`from acre.store.v1 import store_pb2`); that line is rewritten to a package-relative import.
"""
from __future__ import annotations

import os
import re
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROTO_DIR = os.path.join(ROOT, "proto")
PROTO_FILE = "acre/store/v1/store.proto"
OUT_DIR = os.path.join(ROOT, "acre_store", "_proto")
FILES = ("store_pb2.py", "store_pb2_grpc.py")


def generate() -> dict[str, str]:
    """Generated file name -> text."""
    from grpc_tools import protoc
    import grpc_tools

    include = os.path.join(os.path.dirname(grpc_tools.__file__), "_proto")
    with tempfile.TemporaryDirectory() as tmp:
        rc = protoc.main(["grpc_tools.protoc", f"-I{PROTO_DIR}", f"-I{include}", f"--python_out={tmp}",
                          f"--grpc_python_out={tmp}", os.path.join(PROTO_DIR, PROTO_FILE)])
        if rc != 0:
            raise RuntimeError(f"protoc failed with exit code {rc}")
        out = {}
        for name in FILES:
            with open(os.path.join(tmp, "acre", "store", "v1", name)) as f:
                out[name] = f.read()
    out["store_pb2_grpc.py"] = re.sub(r"^from acre\.store\.v1 import store_pb2",
                                      "from . import store_pb2", out["store_pb2_grpc.py"], flags=re.M)
    return out


def descriptor():
    """The FileDescriptorProto of store.proto as protoc compiles it now (json_name stripped, as in gencode)."""
    from grpc_tools import protoc
    import grpc_tools

    include = os.path.join(os.path.dirname(grpc_tools.__file__), "_proto")
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "d.pb")
        rc = protoc.main(["grpc_tools.protoc", f"-I{PROTO_DIR}", f"-I{include}", f"--descriptor_set_out={out}",
                          os.path.join(PROTO_DIR, PROTO_FILE)])
        if rc != 0:
            raise RuntimeError(f"protoc failed with exit code {rc}")
        from google.protobuf import descriptor_pb2

        fds = descriptor_pb2.FileDescriptorSet()
        with open(out, "rb") as f:
            fds.ParseFromString(f.read())
        fd = fds.file[0]
        for msg in fd.message_type:
            for field in msg.field:
                field.ClearField("json_name")
        return fd


def main() -> int:
    os.makedirs(OUT_DIR, exist_ok=True)
    for name, text in generate().items():
        with open(os.path.join(OUT_DIR, name), "w") as f:
            f.write(text)
    init = os.path.join(OUT_DIR, "__init__.py")
    if not os.path.exists(init):
        with open(init, "w") as f:
            f.write('"""Generated from proto/acre/store/v1/store.proto by `python -m acre_store.gen_proto`."""\n')
    print(f"wrote {', '.join(FILES)} to {OUT_DIR}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
