"""`acre ingest` and `acre ask`: thin wrappers that parse files and print results."""
from __future__ import annotations

import json
import sys

from .errors import DocumentError, InputError


def read_document(path: str) -> str:
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


def resolve_doc_id(store, doc: str) -> str:
    """A full id, or a unique prefix of one (as git does for commits)."""
    doc = doc.strip().lower()
    if len(doc) >= 40:
        return doc
    if len(doc) < 4:
        raise DocumentError(f"document id prefix {doc!r} is too short (need 4+ characters)")
    matches = [m.doc_id for m in store.list() if m.doc_id.startswith(doc)]
    if not matches:
        raise DocumentError(f"unknown document {doc}")
    if len(matches) > 1:
        raise DocumentError(f"document prefix {doc} is ambiguous ({len(matches)} matches)")
    return matches[0]


def ingest(args) -> int:
    from .engine import Engine

    text = read_document(args.file)
    eng = Engine.from_pretrained(args.model, device=args.device)
    info = eng.ingest(text, store=args.store, name=args.name or None,
                      progress=not args.no_progress and sys.stderr.isatty())
    d = info.to_dict()
    if args.json:
        print(json.dumps(d))
    else:
        state = "already stored" if info.existed else f"ingested in {info.seconds:.1f}s"
        print(f"doc_id   {info.doc_id}\nn_tokens {info.n_tokens}\nn_chunks {info.n_chunks}\n"
              f"n_l1     {info.n_l1}\nseconds  {info.seconds:.2f} ({state})")
    return 0


def ask(args) -> int:
    from .engine import Engine

    eng = Engine.from_pretrained(args.model, device=args.device)
    store = eng._store(args.store)
    doc_id = resolve_doc_id(store, args.doc)
    a = eng.ask(doc_id, args.question, policy=args.policy, answer_prefix=args.answer_prefix, store=store,
                max_new_tokens=args.max_new_tokens, mode=args.mode, k_min=args.k_min, k_max=args.k_max,
                neighbors=args.neighbors)
    if args.json:
        print(json.dumps(a.to_dict()))
    else:
        print(a.answer)
        print(f"[{a.policy}, {a.mode} positions: KV ratio {a.kv_ratio:.3f} ({a.n_active}/{a.n_tokens} entries), "
              f"{len(a.refilled_chunks)} chunks refilled, TTFT {a.ttft_s:.2f}s, total {a.total_s:.2f}s]",
              file=sys.stderr)
    return 0
