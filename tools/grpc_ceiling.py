"""The ceiling of gRPC-Python itself: a bare server that streams a fixed payload, no store behind it.

`tools/bench_store.py` runs it beside the daemon so the socket cells can be read against what gRPC-Python
moves on the same machine with nothing else in the way: raw-bytes serializers (no protobuf), the frame
size the daemon uses, a Unix socket, one call per chunk. Run alone:

    python tools/grpc_ceiling.py --mib 4 --calls 60
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent import futures

import numpy as np

if __package__ in (None, ""):
    # NOTE: run as `python tools/grpc_ceiling.py`: make `tools.*` importable like `python -m` does.
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

SERVICE = "acre.bench.Ceiling"


def _ident(b: bytes) -> bytes:
    return b


def serve(path: str, nbytes: int, frame: int) -> None:
    """Serve `Fetch` (server-streaming, `nbytes` in frames of `frame`) on unix:`path` until killed."""
    import grpc

    payload = os.urandom(nbytes)
    frames = [payload[o:o + frame] for o in range(0, nbytes, frame)]

    def fetch(request, context):
        yield from frames

    opts = [("grpc.max_receive_message_length", frame + (1 << 20)),
            ("grpc.max_send_message_length", frame + (1 << 20))]
    server = grpc.server(futures.ThreadPoolExecutor(4), options=opts)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, {
        "Fetch": grpc.unary_stream_rpc_method_handler(fetch, request_deserializer=_ident,
                                                      response_serializer=_ident)}),))
    server.add_insecure_port(f"unix:{path}")
    server.start()
    print("ready", flush=True)
    server.wait_for_termination()


def measure(nbytes: int, frame: int, calls: int) -> dict:
    """p50/p99 of one `nbytes` call against a bare server in its own process."""
    import grpc

    sock_dir = tempfile.mkdtemp(prefix="acre-ceil-", dir="/tmp")
    path = os.path.join(sock_dir, "c.sock")
    proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--serve", path, "--bytes", str(nbytes),
                             "--frame", str(frame)], stdout=subprocess.PIPE, text=True)
    try:
        if proc.stdout.readline().strip() != "ready":
            raise RuntimeError("bare gRPC server did not start")
        # the client options of acre_store's client: no per-call thread for a streaming call
        opts = [("grpc.max_receive_message_length", frame + (1 << 20)), ("SingleThreadedUnaryStream", 1)]
        with grpc.insecure_channel(f"unix:{path}", options=opts) as ch:
            fetch = ch.unary_stream(f"/{SERVICE}/Fetch", request_serializer=_ident, response_deserializer=_ident)
            for _ in range(3):  # warm-up: connection, thread pool
                sum(len(b) for b in fetch(b""))
            lat, t0 = [], time.perf_counter()
            for _ in range(calls):
                t = time.perf_counter()
                got = sum(len(b) for b in fetch(b""))
                lat.append(time.perf_counter() - t)
                if got != nbytes:
                    raise RuntimeError(f"bare gRPC server sent {got} bytes, expected {nbytes}")
            wall = time.perf_counter() - t0
    finally:
        proc.kill()
        proc.wait()
        try:
            os.unlink(path)
            os.rmdir(sock_dir)
        except OSError:
            pass
    from tools.bench_store import summary

    return summary(nbytes * calls, wall, np.asarray(lat))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--mib", type=float, default=4.0, help="bytes per call, MiB")
    ap.add_argument("--frame-mib", type=float, default=4.0, help="bytes per streamed message, MiB")
    ap.add_argument("--calls", type=int, default=60)
    ap.add_argument("--serve", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--bytes", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--frame", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        serve(args.serve, args.bytes, args.frame)
        return 0
    r = measure(int(args.mib * (1 << 20)), int(args.frame_mib * (1 << 20)), args.calls)
    print(json.dumps({k: round(v, 3) for k, v in r.items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
