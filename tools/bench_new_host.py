"""Benchmark the first question on a host that never saw the document, against re-prefilling it.

Host A's daemon ingests a generated document and publishes it to an S3-compatible bucket (moto's
standalone server on 127.0.0.1, started here). Then, per repetition, a daemon B with an empty data folder
on the same bucket, and a worker with cold caches, asks one question through B: B reads the document
through from the bucket (checksums verified), the worker loads its L1 and refills the chunks the question
needs. The baseline, in the same run: prefill document + question from scratch and decode the same number
of tokens (what a host without the shared store would do).

    python tools/bench_new_host.py [--quick] [--tokens 7800] [--reps 2] [--out DIR]

Ends with one JSON line holding the headline ratio (target: the first question >= 10x faster at 7.8k).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

if __package__ in (None, ""):
    # NOTE: run as `python tools/bench_new_host.py`: make `tools.*` importable like `python -m` does.
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tools.bench_object_store import start_moto  # noqa: E402
from tools.bench_serve import free_port  # noqa: E402


def start_daemon(data: Path, sock: str, bucket_url: str, env: dict, extra: tuple = ()) -> subprocess.Popen:
    from acre_store import connect

    p = subprocess.Popen([sys.executable, "-m", "acre_model.cli", "store", "serve", "--data", str(data),
                          "--listen", sock, "--object-store", bucket_url, "--log-level", "WARNING", *extra],
                         env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            with connect(sock, timeout=2) as c:
                if c.health() == "SERVING":
                    return p
        except Exception:  # not up yet
            pass
        if p.poll() is not None:
            raise SystemExit(f"bench_new_host: the daemon exited with {p.returncode}")
        time.sleep(0.2)
    p.kill()
    raise SystemExit("bench_new_host: the daemon did not come up")


def stop(p: subprocess.Popen) -> None:
    p.terminate()
    try:
        p.wait(30)
    except subprocess.TimeoutExpired:
        p.kill()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="the same at 7.8k tokens, 2 repetitions")
    ap.add_argument("--tokens", type=int, default=7800)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--max-new-tokens", type=int, default=16)
    ap.add_argument("--land-quiet", type=float, default=None, metavar="SECONDS",
                    help="daemon B's --object-land-quiet (default: the daemon's default)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    extra = () if args.land_quiet is None else ("--object-land-quiet", str(args.land_quiet))
    import boto3

    from acre_model.engine import Engine
    from acre_model.synth import make_needle_doc
    from acre_store import connect

    tmp = Path(tempfile.mkdtemp(prefix="acre-bench-new-host-"))
    port = free_port()
    creds = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench", "AWS_REGION": "us-east-1",
             "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}"}
    os.environ.update(creds)
    env = {**os.environ}
    moto = start_moto(port)
    procs = []
    try:
        boto3.client("s3", endpoint_url=creds["AWS_ENDPOINT_URL"]).create_bucket(Bucket="acre-bench")
        bucket = "s3://acre-bench/kv"
        eng = Engine.from_pretrained()
        d = make_needle_doc(eng.tokenizer.encode, args.tokens, depth=0.5, seed=81_000)
        a_sock = f"unix://{tmp}/a.sock"
        procs.append(start_daemon(tmp / "a", a_sock, bucket, env))
        with connect(a_sock) as a:
            t0 = time.perf_counter()
            info = eng.ingest(d.text, store=a)
            ingest_s = time.perf_counter() - t0
        stop(procs.pop())
        first, answers = [], []
        for rep in range(args.reps):
            b_sock = f"unix://{tmp}/b{rep}.sock"
            procs.append(start_daemon(tmp / f"b{rep}", b_sock, bucket, env, extra))  # an empty data folder
            eng.reset_caches()
            with connect(b_sock) as b:
                t0 = time.perf_counter()
                ans = eng.ask(info.doc_id, d.question, answer_prefix=d.answer_prefix, store=b,
                              max_new_tokens=args.max_new_tokens)
                first.append(time.perf_counter() - t0)
                answers.append(ans)
            stop(procs.pop())
        reprefill = []
        for rep in range(args.reps):
            parts = eng.tokenizer.prompt_ids(d.text, d.question, d.answer_prefix)
            ids = torch.tensor(parts.prefix + parts.suffix)
            t0 = time.perf_counter()
            cache = eng.model.new_cache(capacity=len(ids) + args.max_new_tokens)
            tok = int(eng.model.prefill(ids, cache).argmax())
            for _ in range(args.max_new_tokens - 1):
                tok = int(eng.model.decode_batch([tok], [cache])[0].argmax())
            reprefill.append(time.perf_counter() - t0)
    finally:
        for p in procs:
            stop(p)
        stop(moto)
    ratio = statistics.median(reprefill) / statistics.median(first)
    print(f"document: {info.n_tokens} tokens, ingested (prefill + publish) in {ingest_s:.1f}s")
    print(f"first question through a daemon with an empty folder (read-through): "
          f"{', '.join(f'{x:.2f}' for x in first)} s; answers right: {sum(d.answer in a.answer for a in answers)}"
          f"/{len(answers)}")
    print(f"re-prefill document + question and decode: {', '.join(f'{x:.2f}' for x in reprefill)} s")
    print(f"ratio (re-prefill / first question, medians): {ratio:.1f}x")
    head = {"tokens": info.n_tokens, "first_question_s": statistics.median(first),
            "reprefill_s": statistics.median(reprefill), "first_question_speedup_vs_reprefill": ratio}
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        Path(args.out, "bench_new_host.json").write_text(json.dumps(
            {"first_s": first, "reprefill_s": reprefill, "ingest_s": ingest_s, "headline": head}, indent=2))
    print(json.dumps(head))
    return 0


if __name__ == "__main__":
    sys.exit(main())
