"""Benchmark the serving process: N clients (1, 4, 16) asking questions about K cached documents through
`acre serve`, side by side in one run with three baselines on the same questions:

  (a) one `acre ask` process per question (the path before the serving process),
  (b) re-prefilling document + question for each question (what a user without a KV store does),
  (c) the same questions one at a time in-process (`Engine.ask`, no HTTP, no batching);
  (d) the same through the scheduler in-process, timed to the first token that shows text, as the
      HTTP client's TTFT is: the difference is what HTTP adds.

Reports TTFT p50/p99 (client side: to the first streamed token), questions/s and answer tokens/s, and
the ratios the serving issue targets. Starts its own daemon and server on this machine (loopback only).

    python tools/bench_serve.py [--quick] [--clients 1,4,16] [--lengths 2048,4096,7800] [--out DIR]

Ends with one JSON line holding the headline ratios.
"""
from __future__ import annotations

import argparse
import json
import os
import queue
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, round(q * (len(xs) - 1))))]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(check, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except Exception:  # not up yet
            pass
        time.sleep(0.25)
    raise SystemExit(f"bench_serve: {what} did not come up in {timeout:.0f} s")


def ask_streaming(client, url: str, body: dict) -> tuple[float, float, int]:
    """(ttft_s, total_s, answer tokens) of one streamed /v1/ask."""
    t0 = time.perf_counter()
    ttft = None
    answer = None
    with client.stream("POST", url + "/v1/ask", json={**body, "stream": True}, timeout=600) as r:
        if r.status_code != 200:
            raise RuntimeError(f"HTTP {r.status_code}: {r.read()[:300]!r}")
        for line in r.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            ev = json.loads(line[6:])
            if ttft is None and ("delta" in ev or "answer" in ev):
                ttft = time.perf_counter() - t0
            if "answer" in ev:
                answer = ev["answer"]
    if answer is None:
        raise RuntimeError("the stream ended without an answer")
    return ttft, time.perf_counter() - t0, answer["n_new_tokens"]


def run_clients(url: str, bodies: list[dict], n_clients: int) -> dict:
    import httpx

    work: queue.Queue = queue.Queue()
    for b in bodies:
        work.put(b)
    res: list[tuple[float, float, int]] = []
    errors: list[str] = []
    lock = threading.Lock()

    def client_loop():
        with httpx.Client() as c:
            while True:
                try:
                    b = work.get_nowait()
                except queue.Empty:
                    return
                try:
                    r = ask_streaming(c, url, b)
                    with lock:
                        res.append(r)
                except Exception as e:  # counted and shown; the run goes on
                    with lock:
                        errors.append(str(e))

    t0 = time.perf_counter()
    threads = [threading.Thread(target=client_loop) for _ in range(n_clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    ttfts = [r[0] for r in res]
    return {"clients": n_clients, "questions": len(res), "errors": len(errors), "wall_s": wall,
            "ttft_p50": pct(ttfts, 0.5), "ttft_p99": pct(ttfts, 0.99), "qps": len(res) / wall,
            "tok_s": sum(r[2] for r in res) / wall, "first_error": errors[0] if errors else ""}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="two documents (2k, 7.8k), fewer questions")
    ap.add_argument("--clients", default="1,4,16")
    ap.add_argument("--lengths", default="2048,4096,7800")
    ap.add_argument("--per-client", type=int, default=2, help="questions per client in each client run")
    ap.add_argument("--max-new-tokens", type=int, default=16)
    ap.add_argument("--process-asks", type=int, default=2, help="questions for baseline (a), one process each")
    ap.add_argument("--ttft-pairs", type=int, default=5, help="rounds of paired HTTP / in-process TTFT per document")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    from acre_model.engine import Engine
    from acre_model.synth import make_needle_doc
    from acre_store import connect

    lengths = [2048, 7800] if args.quick else [int(x) for x in args.lengths.split(",")]
    clients = [int(x) for x in args.clients.split(",")]
    tmp = Path(tempfile.mkdtemp(prefix="acre-bench-serve-"))
    env = {**os.environ, "ACRE_LOG_LEVEL": "WARNING"}
    procs: list[subprocess.Popen] = []
    acre = [sys.executable, "-m", "acre_model.cli"]
    try:
        # a daemon and a serving process of our own
        addr = f"unix://{tmp}/d.sock"
        procs.append(subprocess.Popen([*acre, "store", "serve", "--data", str(tmp / "data"), "--listen", addr],
                                      env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        wait_for(lambda: connect(addr, timeout=2).health() == "SERVING", 60, "the daemon")
        store = connect(addr)
        eng = Engine.from_pretrained()
        docs = []
        for i, n in enumerate(lengths):
            d = make_needle_doc(eng.tokenizer.encode, n, depth=0.3 + 0.4 * i / max(1, len(lengths) - 1), seed=70_000 + i)
            docs.append((n, d, eng.ingest(d.text, store=store).doc_id))
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        procs.append(subprocess.Popen([*acre, "serve", "--store", addr, "--port", str(port), "--max-batch",
                                       str(max(clients))], env=env, stdout=subprocess.DEVNULL,
                                      stderr=open(tmp / "serve.log", "w")))
        import httpx

        wait_for(lambda: httpx.get(url + "/health", timeout=2).status_code == 200, 300, "acre serve")

        def bodies(k: int) -> list[dict]:
            out = []
            for j in range(k):
                n, d, doc_id = docs[j % len(docs)]
                out.append({"doc_id": doc_id, "question": d.question, "answer_prefix": d.answer_prefix,
                            "max_new_tokens": args.max_new_tokens})
            return out

        run_clients(url, bodies(len(docs)), 1)  # warm-up: every document's L1 loaded in the server
        rows = []
        for n_c in clients:
            r = run_clients(url, bodies(n_c * args.per_client), n_c)
            rows.append(r)
            print(f"  {n_c} clients: {r['questions']} questions in {r['wall_s']:.1f}s", file=sys.stderr)
        # (c) one at a time in-process, the same questions as the 1-client run
        seq = bodies(max(clients[0] * args.per_client, 3 * len(docs)))
        for b in seq[: len(docs)]:  # warm: L1 loaded here too
            eng.ask(b["doc_id"], b["question"], answer_prefix=b["answer_prefix"], store=store, max_new_tokens=1)
        t0 = time.perf_counter()
        local = [eng.ask(b["doc_id"], b["question"], answer_prefix=b["answer_prefix"], store=store,
                         max_new_tokens=args.max_new_tokens) for b in seq]
        wall = time.perf_counter() - t0
        inproc = {"ttft_p50": pct([a.ttft_s for a in local], 0.5), "qps": len(local) / wall,
                  "tok_s": sum(a.n_new_tokens for a in local) / wall}
        # (d) what HTTP adds to TTFT: the same question streamed through the server (1 client) and through a
        # scheduler in this process, in turns (so that drift on a shared machine hits both), each timed to the
        # first token that shows text, as a streaming client sees it
        from acre_model.scheduler import AskRequest, Delta, Scheduler

        sched = Scheduler(eng)
        pairs = []
        try:
            with httpx.Client() as c:
                for _ in range(args.ttft_pairs):
                    for b in bodies(len(docs)):
                        http_ttft = ask_streaming(c, url, b)[0]
                        t0 = time.perf_counter()
                        seen = None
                        for ev in sched.submit(AskRequest(b["doc_id"], b["question"], answer_prefix=b["answer_prefix"],
                                                          max_new_tokens=args.max_new_tokens, store=store)):
                            if seen is None and isinstance(ev, Delta) and ev.text.strip():
                                seen = time.perf_counter() - t0
                        pairs.append((http_ttft, seen if seen is not None else time.perf_counter() - t0))
        finally:
            sched.close()
        inproc["ttft_first_text_p50"] = pct([p[1] for p in pairs], 0.5)
        inproc["http_ttft_p50"] = pct([p[0] for p in pairs], 0.5)
        inproc["http_minus_inproc_p50_ms"] = 1000 * pct([p[0] - p[1] for p in pairs], 0.5)
        # (b) re-prefill document + question, then decode, per question; per length
        reprefill = {}
        for n, d, _ in docs:
            parts = eng.tokenizer.prompt_ids(d.text, d.question, d.answer_prefix)
            ids = torch.tensor(parts.prefix + parts.suffix)
            t0 = time.perf_counter()
            cache = eng.model.new_cache(capacity=len(ids) + args.max_new_tokens)
            logits = eng.model.prefill(ids, cache)
            ttft = time.perf_counter() - t0
            tok = int(logits.argmax())
            for _ in range(args.max_new_tokens - 1):
                tok = int(eng.model.decode_batch([tok], [cache])[0].argmax())
            reprefill[n] = {"ttft": ttft, "total": time.perf_counter() - t0}
        # (a) one `acre ask` process per question
        proc_s = []
        for b in seq[: args.process_asks]:
            t0 = time.perf_counter()
            p = subprocess.run([*acre, "ask", b["doc_id"], b["question"], "--answer-prefix", b["answer_prefix"],
                                "--store", addr, "--max-new-tokens", str(args.max_new_tokens), "--json"],
                               env=env, capture_output=True, text=True, timeout=600)
            if p.returncode != 0:
                raise SystemExit(f"bench_serve: acre ask failed: {p.stderr.strip()}")
            proc_s.append(time.perf_counter() - t0)
        store.close()
    finally:
        for p in reversed(procs):
            p.terminate()
        for p in procs:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
    mix_reprefill_s = statistics.mean(reprefill[docs[j % len(docs)][0]]["total"] for j in range(len(docs)))
    longest = max(lengths)
    print(f"\ndocuments: {', '.join(str(n) for n in lengths)} tokens; {args.max_new_tokens} new tokens a question")
    print(f"{'path':<34} {'TTFT p50':>9} {'TTFT p99':>9} {'q/s':>7} {'tok/s':>7}")
    for r in rows:
        print(f"{'acre serve, ' + str(r['clients']) + ' clients':<34} {r['ttft_p50']:>9.3f} {r['ttft_p99']:>9.3f} "
              f"{r['qps']:>7.2f} {r['tok_s']:>7.1f}" + (f"  ({r['errors']} errors: {r['first_error']})" if r['errors'] else ""))
    print(f"{'(c) in-process, one at a time':<34} {inproc['ttft_p50']:>9.3f} {'':>9} {inproc['qps']:>7.2f} "
          f"{inproc['tok_s']:>7.1f}")
    print(f"{'(d) in-process, first text token':<34} {inproc['ttft_first_text_p50']:>9.3f}   (paired HTTP: "
          f"{inproc['http_ttft_p50']:.3f}; median difference {inproc['http_minus_inproc_p50_ms']:.1f} ms over "
          f"{args.ttft_pairs * len(docs)} pairs)")
    for n in lengths:
        print(f"{'(b) re-prefill, ' + str(n) + ' tokens':<34} {reprefill[n]['ttft']:>9.3f} {'':>9} "
              f"{1 / reprefill[n]['total']:>7.2f}")
    print(f"{'(b) re-prefill, same mix':<34} {'':>9} {'':>9} {1 / mix_reprefill_s:>7.2f}")
    print(f"{'(a) one acre ask process each':<34} {'':>9} {'':>9} {1 / statistics.mean(proc_s):>7.2f}")
    top = rows[-1]
    head = {
        "http_ttft_overhead_ms": inproc["http_minus_inproc_p50_ms"],
        f"qps_{top['clients']}_clients_over_one_at_a_time": top["qps"] / inproc["qps"],
        f"qps_{top['clients']}_clients_over_reprefill_{longest}": top["qps"] * reprefill[longest]["total"],
        f"qps_{top['clients']}_clients_over_reprefill_mix": top["qps"] * mix_reprefill_s,
        f"qps_{top['clients']}_clients_over_process_per_question": top["qps"] * statistics.mean(proc_s),
        f"ttft_p99_over_p50_{top['clients']}_clients": top["ttft_p99"] / top["ttft_p50"],
        "errors": sum(r["errors"] for r in rows),
    }
    print("\nratios: " + ", ".join(f"{k} {v:.2f}" for k, v in head.items()))
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        Path(args.out, "bench_serve.json").write_text(json.dumps(
            {"rows": rows, "in_process": inproc, "reprefill": reprefill, "process_per_question_s": proc_s,
             "headline": head}, indent=2))
    print(json.dumps(head))
    return 0


if __name__ == "__main__":
    sys.exit(main())
