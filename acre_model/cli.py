"""`acre`: the command line. Parses, sets up logging, then imports the heavy modules it needs.

Every command takes --help; --json prints one JSON object. User errors print one line on stderr and
exit 1 (never a traceback).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from typing import Any

EXIT_USER_ERROR = 1
SERVER_HELP = ("send the work to a running `acre serve` at this URL, e.g. http://127.0.0.1:8000 (default: "
               "$ACRE_SERVER; its API key from $ACRE_API_KEY)")
STORE_HELP = "daemon address, e.g. unix:///tmp/acre.sock (default: $ACRE_STORE, else the embedded store in $ACRE_HOME)"
VERSION = "0.1.0"  # when not installed (run from a checkout); keep in step with pyproject.toml


def version() -> str:
    """The installed distribution's version (package metadata), else VERSION."""
    from importlib.metadata import PackageNotFoundError, version as dist_version

    try:
        return dist_version("acre")
    except PackageNotFoundError:
        return VERSION


def _print(args, obj: dict[str, Any], human: str) -> None:
    if getattr(args, "json", False):
        print(json.dumps(obj))
    else:
        print(human)


def _engine(args):
    from .engine import Engine

    return Engine.from_pretrained(args.model, device=args.device)


def cmd_model_prepare(args) -> int:
    from .convert import prepare

    path = prepare(args.name, force=args.force)
    _print(args, {"path": str(path)}, str(path))
    return 0


def cmd_model_calibrate(args) -> int:
    from pathlib import Path

    from .calibrate import RESULT_FILE, calibrate
    from .engine import Engine

    eng = Engine.from_pretrained(args.name, device=args.device)
    lengths = tuple(int(x) for x in str(args.lengths).split(",") if x)
    log = (lambda *a: None) if args.json else (lambda m: print(m, file=sys.stderr))
    res = calibrate(eng, n_probes=args.n_probes, lengths=lengths, n_heads=args.n_heads, log=log)
    out = Path(args.out) if args.out else eng.path / RESULT_FILE
    out.write_text(json.dumps(res, indent=2))
    _print(args, {**res, "path": str(out)}, f"retrieval heads (layer, kv_head): {res['heads']}  ->  {out}")
    return 0


def cmd_generate(args) -> int:
    eng = _engine(args)
    g = eng.generate(args.prompt, max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                     top_p=args.top_p, seed=args.seed)
    _print(args, {"text": g.text, "n_prompt_tokens": g.n_prompt_tokens, "n_new_tokens": len(g.tokens),
                  "ttft_s": g.ttft_s, "total_s": g.total_s, "ms_per_token": g.ms_per_token}, g.text)
    return 0


def read_document(path: str) -> str:
    """The text of a file (or of standard input for "-"), as UTF-8."""
    from .errors import InputError

    if path == "-":
        data = sys.stdin.buffer.read()
        where = "standard input"
    else:
        try:
            with open(path, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            raise InputError(f"{path}: no such file") from None
        except IsADirectoryError:
            raise InputError(f"{path}: is a directory") from None
        where = path
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise InputError(f"{where}: not UTF-8 text (byte {e.start})") from None


def _server(args):
    """The client of `acre serve` named by --server / $ACRE_SERVER, or None to work in this process."""
    if not getattr(args, "server", None):
        return None
    from acre_serve.client import ServerClient

    return ServerClient(args.server)


def cmd_ingest(args) -> int:
    text = read_document(args.file)
    server = _server(args)
    if server is not None:
        d = server.ingest(text, args.name or "", args.collection)
    else:
        d = _engine(args).ingest(text, store=args.store, name=args.name or None,
                                 progress=not args.no_progress and sys.stderr.isatty(),
                                 collection=args.collection).to_dict()
    state = "already stored" if d["existed"] else f"ingested in {d['seconds']:.1f}s"
    _print(args, d, f"doc_id   {d['doc_id']}\nn_tokens {d['n_tokens']}\nn_chunks {d['n_chunks']}\n"
                    f"n_l1     {d['n_l1']}\nseconds  {d['seconds']:.2f} ({state})")
    return 0


def _cli_knobs(args) -> dict:
    """The policy knobs given on the command line (unset ones are left to the policy)."""
    return {k: v for k, v in (("mode", args.mode), ("k_min", args.k_min), ("k_max", args.k_max),
                              ("neighbors", args.neighbors), ("coverage", getattr(args, "coverage", None)),
                              ("kv_budget", getattr(args, "kv_budget", None)),
                              ("reselect_min", getattr(args, "reselect_min", None))) if v is not None}


def read_questions(path: str) -> list[dict]:
    """Questions of a JSONL file (or "-" for standard input): one object a line with "question" and,
    optionally, "answer_prefix", "policy", "max_new_tokens", "stop", "knobs" and "reselect"."""
    from .errors import InputError

    allowed = {"question", "answer_prefix", "policy", "max_new_tokens", "stop", "knobs", "reselect", "id"}
    out = []
    for n, line in enumerate(read_document(path).splitlines(), 1):
        if not line.strip():
            continue
        try:
            q = json.loads(line)
        except json.JSONDecodeError as e:
            raise InputError(f"{path}:{n}: not JSON ({e.msg})") from None
        if not isinstance(q, dict) or not isinstance(q.get("question"), str):
            raise InputError(f"{path}:{n}: each line must be an object with a \"question\" string")
        extra = sorted(set(q) - allowed)
        if extra:
            raise InputError(f"{path}:{n}: unknown field {extra[0]!r} (fields: {', '.join(sorted(allowed))})")
        out.append(q)
    if not out:
        raise InputError(f"{path}: no questions")
    return out


def cmd_ask(args) -> int:
    from acre_store import resolve_doc_id

    from .errors import InputError

    if (args.question is None) == (args.questions is None):
        raise InputError("give either a QUESTION or --questions FILE.jsonl")
    from .library import is_library_ref, resolve_library

    server = _server(args)
    if server is not None:
        if args.questions is not None:
            return _ask_many_on_server(args, server)
        a = server.ask({"doc_id": args.doc, "question": args.question, "answer_prefix": args.answer_prefix,
                        "policy": args.policy, "max_new_tokens": args.max_new_tokens, "knobs": _cli_knobs(args),
                        "reselect": args.reselect})
    else:
        eng = _engine(args)
        store = eng.open_store(args.store)
        doc_id = resolve_library(store, args.doc) if is_library_ref(args.doc) else resolve_doc_id(store, args.doc)
        if args.questions is not None:
            return _ask_many(args, eng, store, doc_id)
        a = eng.ask(doc_id, args.question, policy=args.policy, answer_prefix=args.answer_prefix, store=store,
                    max_new_tokens=args.max_new_tokens, reselect=args.reselect, **_cli_knobs(args)).to_dict()
    _print(args, a, a["answer"])
    if not args.json:
        joined = f" ({len(a['reselected_chunks'])} joined while decoding)" if a.get("reselected_chunks") else ""
        print(f"[{a['policy']}, {a['mode']} positions: KV ratio {a['kv_ratio']:.3f} ({a['n_active']}/{a['n_tokens']} "
              f"entries), {len(a['refilled_chunks'])} chunks refilled{joined}, TTFT {a['ttft_s']:.2f}s, "
              f"total {a['total_s']:.2f}s]", file=sys.stderr)
        if is_library_ref(args.doc):
            used = "; ".join(f"{s['name'] or s['doc_id'][:12]} chunks {s['chunks']}" for s in a.get("sources", []))
            print(f"[sources: {used or 'none'}]", file=sys.stderr)
    return 0


def _question_fields(args, q: dict) -> dict:
    """One line of a --questions file with the command line's values as its defaults."""
    return {"question": q["question"], "answer_prefix": q.get("answer_prefix", args.answer_prefix),
            "policy": q.get("policy", args.policy), "max_new_tokens": q.get("max_new_tokens", args.max_new_tokens),
            "knobs": {**_cli_knobs(args), **q.get("knobs", {})}, "stop": q.get("stop", []),
            "reselect": q.get("reselect", args.reselect)}


def _write_rows(args, rows) -> None:
    out = open(args.out, "w", encoding="utf-8") if args.out else sys.stdout
    try:
        for row in rows:
            out.write(json.dumps(row) + "\n")
            out.flush()
    finally:
        if out is not sys.stdout:
            out.close()


def _ask_many_on_server(args, server) -> int:
    """--questions through a server: one /v1/ask/batch request (answered together on its scheduler)."""
    questions = read_questions(args.questions)
    answers = server.ask_batch({"doc_id": args.doc, "questions": [_question_fields(args, q) for q in questions]})
    _write_rows(args, ({**{k: q[k] for k in ("id", "question") if k in q}, **a} for q, a in zip(questions, answers)))
    return 0


def _ask_many(args, eng, store, doc_id: str) -> int:
    """--questions: every question of the file at once through the batching scheduler; one JSON line
    per question, in the file's order ({"question", ...the answer} or {"question", "error"})."""
    from .errors import AcreError
    from .scheduler import AskRequest, Scheduler

    questions = read_questions(args.questions)
    failed = 0
    sched = Scheduler(eng)
    try:
        streams = []
        for q in questions:
            f = _question_fields(args, q)
            req = AskRequest(doc_id, f.pop("question"), **f, store=store)
            try:
                streams.append(sched.submit(req))
            except AcreError as e:
                streams.append(e)

        def rows():
            nonlocal failed
            for q, s in zip(questions, streams):
                head = {k: q[k] for k in ("id", "question") if k in q}
                try:
                    if isinstance(s, Exception):
                        raise s
                    yield {**head, **s.result().to_dict()}
                except AcreError as e:
                    failed += 1
                    yield {**head, "error": str(e)}

        _write_rows(args, rows())
    finally:
        sched.close()
    if failed:
        print(f"acre: {failed} of {len(questions)} questions failed (see their \"error\")", file=sys.stderr)
    return EXIT_USER_ERROR if failed else 0


def cmd_demo(args) -> int:
    from .demo import run_demo

    return run_demo(args)


def cmd_serve(args) -> int:
    from acre_serve.cli import run

    return run(args)


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None, help="HF-style folder, hub id (org/name[@revision]) in the local "
                   "Hugging Face cache, or a bundled model: SmolLM2-135M-Instruct (the default) or gemma-3-270m")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when present)")
    p.add_argument("--json", action="store_true", help="print one JSON object")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="acre", description="Ask many questions of long documents: "
                                 "bi-layer KV cache with query-guided activation refilling.")
    ap.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    ap.add_argument("--version", action="version", version=f"acre {version()}")
    sub = ap.add_subparsers(dest="command", required=True)

    pm = sub.add_parser("model", help="prepare or calibrate a model")
    msub = pm.add_subparsers(dest="model_command", required=True)
    pp = msub.add_parser("prepare", help="convert a bundled model (default: the default model; or "
                         "gemma-3-270m) into the model cache")
    pp.add_argument("name", nargs="?", default=None, help="SmolLM2-135M-Instruct (default) or gemma-3-270m")
    pp.add_argument("--force", action="store_true", help="convert again even if already prepared")
    pp.add_argument("--json", action="store_true")
    pp.set_defaults(func=cmd_model_prepare)
    pc = msub.add_parser("calibrate", help="find the model's retrieval heads with synthetic probes")
    pc.add_argument("name", nargs="?", default=None)
    pc.add_argument("--device", default=None)
    pc.add_argument("--n-probes", type=int, default=12)
    pc.add_argument("--lengths", default="1024,2048", help="probe lengths in tokens")
    pc.add_argument("--n-heads", type=int, default=6, help="retrieval heads to keep (the locator index)")
    pc.add_argument("--out", default=None, help="where to write the result (default: beside the model)")
    pc.add_argument("--json", action="store_true")
    pc.set_defaults(func=cmd_model_calibrate, model=None)

    pg = sub.add_parser("generate", help="plain chat completion with the full model")
    pg.add_argument("prompt")
    pg.add_argument("--max-new-tokens", type=int, default=128)
    pg.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    pg.add_argument("--top-p", type=float, default=1.0)
    pg.add_argument("--seed", type=int, default=None)
    _add_model_args(pg)
    pg.set_defaults(func=cmd_generate)

    pi = sub.add_parser("ingest", help="prefill a document once and store its L1 + L2 KV")
    pi.add_argument("file", help="a text file, or - for standard input")
    pi.add_argument("--store", default=os.environ.get("ACRE_STORE"), help=STORE_HELP)
    pi.add_argument("--server", default=os.environ.get("ACRE_SERVER"), help=SERVER_HELP)
    pi.add_argument("--name", default="", help="human-readable name")
    pi.add_argument("--collection", default=None, metavar="NAME",
                    help="a library the document belongs to; ask over all of it with `acre ask @NAME ...`")
    pi.add_argument("--no-progress", action="store_true")
    _add_model_args(pi)
    pi.set_defaults(func=cmd_ingest)

    pa = sub.add_parser("ask", help="answer a question on an ingested document (or on several)")
    pa.add_argument("doc", help="document id (or a unique prefix of it, or its name); several separated by "
                                "commas, or @NAME for a collection: one question over all of them")
    pa.add_argument("question", nargs="?", default=None)
    pa.add_argument("--questions", default=None, metavar="FILE.jsonl",
                    help="many questions on the document, one JSON object a line ({\"question\": ..., "
                         "\"answer_prefix\"?, \"policy\"?, \"max_new_tokens\"?, \"stop\"?, \"knobs\"?, \"id\"?}), "
                         "answered together; writes one JSON line per question")
    pa.add_argument("--out", default=None, help="with --questions: write the JSONL here instead of stdout")
    pa.add_argument("--store", default=os.environ.get("ACRE_STORE"), help=STORE_HELP)
    pa.add_argument("--server", default=os.environ.get("ACRE_SERVER"), help=SERVER_HELP)
    pa.add_argument("--policy", default="acre", help="acre, acre-entropy, acre-l1, fixed-k, full, l1-only, "
                    "random, streaming, h2o, snapkv, quest, infllm")
    pa.add_argument("--answer-prefix", default="")
    pa.add_argument("--max-new-tokens", type=int, default=64)
    pa.add_argument("--mode", choices=["exact", "focus"], default=None,
                    help="position mode (chunk policies and l1-only)")
    pa.add_argument("--k-min", type=int, default=None, help="fewest chunks (acre, acre-l1, random)")
    pa.add_argument("--k-max", type=int, default=None, help="most chunks (acre, acre-l1, random)")
    pa.add_argument("--neighbors", type=int, default=None, help="neighbours per chosen chunk (chunk policies)")
    pa.add_argument("--coverage", type=float, default=None,
                    help="share of the locator's distribution the chosen chunks must hold (acre)")
    pa.add_argument("--kv-budget", type=float, default=None,
                    help="most of the document (0-1) refilled chunks may take, neighbours included "
                         "(acre, acre-entropy, acre-l1, random)")
    pa.add_argument("--reselect", type=int, default=0, metavar="N",
                    help="every N answer tokens, run the locator again with the answer so far and refill "
                         "the chunks it still finds outside the active cache (chunk policies; 0: off)")
    pa.add_argument("--reselect-min", type=float, default=None,
                    help="share of a query row's attention (0-1], with attended tokens left out, a chunk needs "
                         "to join at re-selection (default 0.9)")
    _add_model_args(pa)
    pa.set_defaults(func=cmd_ask)

    pd = sub.add_parser("demo", help="the main job: ingest a long document once, ask several questions")
    pd.add_argument("--tokens", type=int, default=3000, help="document length in tokens")
    pd.add_argument("--store", default=os.environ.get("ACRE_STORE"), help=STORE_HELP)
    _add_model_args(pd)
    pd.set_defaults(func=cmd_demo)

    try:
        from acre_store.cli import add_store_parser
    except ImportError:  # the store package is optional for model-only use
        pass
    else:
        add_store_parser(sub)
    try:
        from acre_serve.cli import add_serve_parser
    except ImportError:  # the serving package is optional too
        pass
    else:
        add_serve_parser(sub, cmd_serve)
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    from .errors import AcreError

    user_errors: tuple[type[BaseException], ...] = (AcreError,)
    try:
        from acre_store.errors import StoreError

        user_errors += (StoreError,)
    except ImportError:
        pass
    try:
        return int(args.func(args) or 0)
    except user_errors as e:
        print(f"acre: error: {e}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("acre: interrupted", file=sys.stderr)
        return 130
    except (OSError, ValueError) as e:
        # Bad files, bad numbers: still the user's input, still one line.
        if os.environ.get("ACRE_DEBUG"):
            raise
        print(f"acre: error: {e}", file=sys.stderr)
        return EXIT_USER_ERROR


if __name__ == "__main__":
    sys.exit(main())
