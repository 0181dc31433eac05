"""`acre serve`: its arguments (registered on the main `acre` parser) and the step from them to `serve`.

Kept free of heavy imports: `acre --help` parses this file.
"""
from __future__ import annotations

import argparse
import logging
import os


def add_serve_parser(subparsers, handler) -> argparse.ArgumentParser:
    from acre_store.cli import parse_bytes

    from .config import DEFAULT_MAX_BODY_BYTES

    p = subparsers.add_parser("serve", help="serve the HTTP API (model workers over one store daemon)",
                              description="Serve the HTTP API: documents, questions (streaming, batches), "
                                          "OpenAI-compatible chat completions, /health and /metrics.")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1; any other needs "
                                                        "an API key or --insecure)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--model", default=None, help="model name or HF-style folder (default: SmolLM2-135M-Instruct)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when present)")
    p.add_argument("--store", default=os.environ.get("ACRE_STORE") or None,
                   help="store daemon address (default $ACRE_STORE; without one, a daemon of its own over "
                        "$ACRE_HOME/store)")
    p.add_argument("--workers", type=int, default=1, help="worker processes, each with its own model (default 1)")
    p.add_argument("--api-key", default=os.environ.get("ACRE_API_KEY") or None,
                   help="clients must send Authorization: Bearer KEY (default $ACRE_API_KEY)")
    p.add_argument("--tls-cert", default=None, help="TLS certificate (PEM); with --tls-key serves HTTPS")
    p.add_argument("--tls-key", default=None, help="TLS private key (PEM)")
    p.add_argument("--max-body-bytes", type=parse_bytes, default=DEFAULT_MAX_BODY_BYTES,
                   help="largest request body, e.g. 32M (default 32 MiB); larger gets 413")
    p.add_argument("--max-batch", type=int, default=16, help="questions decoded together per worker (default 16)")
    p.add_argument("--max-open-docs", type=int, default=16,
                   help="documents whose L1 a worker keeps loaded (default 16); a question over a larger library "
                        "reloads the others from the store")
    p.add_argument("--drain", type=int, default=30, help="seconds in-flight requests may run on after SIGTERM")
    p.add_argument("--insecure", action="store_true", help="allow a non-loopback --host without an API key")
    p.set_defaults(func=handler)
    return p


def run(args) -> int:
    from .config import ServeConfig
    from .server import serve

    logging.getLogger("acre_serve").setLevel(logging.INFO)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    cfg = ServeConfig(host=args.host, port=args.port, model=args.model, device=args.device, store=args.store,
                      workers=args.workers, api_key=args.api_key, tls_cert=args.tls_cert, tls_key=args.tls_key,
                      max_body_bytes=args.max_body_bytes, max_batch=args.max_batch, insecure=args.insecure,
                      drain_s=args.drain, max_open_docs=args.max_open_docs)
    return serve(cfg)
