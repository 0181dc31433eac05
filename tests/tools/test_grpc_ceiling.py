"""The bare gRPC-Python baseline of bench_store: a real server process, real unix socket."""
from tools.grpc_ceiling import measure


def test_bare_grpc_moves_the_requested_bytes_in_frames():
    # 1 MiB in 256 KiB frames: the client checks every call's byte count (raises otherwise)
    r = measure(1 << 20, 256 << 10, calls=5)
    assert r["n"] == 5
    assert r["p50_ms"] > 0 and r["p99_ms"] >= r["p50_ms"]
    assert abs(r["p50_gbps"] - (1 << 20) / (r["p50_ms"] / 1e3) / 1e9) < 1e-6


def test_uneven_last_frame():
    r = measure((1 << 20) + 123, 256 << 10, calls=2)
    assert r["n"] == 2
