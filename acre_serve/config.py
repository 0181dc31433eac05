"""ServeConfig: what one `acre serve` needs, validated once, carried to every worker process.

uvicorn starts each worker with the `spawn` method and builds its app from an import string
(`acre_serve.app:create_app`), so the config travels as one JSON environment variable
(`ACRE_SERVE_CONFIG`) set by the parent before the workers start.
"""
from __future__ import annotations

import ipaddress
import json
import os
from dataclasses import asdict, dataclass, fields

from acre_model.errors import AcreError

ENV_VAR = "ACRE_SERVE_CONFIG"
DEFAULT_MAX_BODY_BYTES = 32 << 20


class ConfigError(AcreError):
    """`acre serve` was asked for something it must not do (the message says what and how to fix it)."""


def is_loopback(host: str) -> bool:
    """True for names and addresses that only this machine can reach."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # any other host name may resolve to a public address


@dataclass
class ServeConfig:
    host: str = "127.0.0.1"
    port: int = 8000
    model: str | None = None  # model name or HF-style folder (None: the default model)
    device: str | None = None  # cpu or cuda (None: cuda when present)
    store: str | None = None  # daemon address; None in a worker: the embedded store (one worker only)
    workers: int = 1
    api_key: str | None = None  # clients send `Authorization: Bearer KEY`
    tls_cert: str | None = None
    tls_key: str | None = None
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    max_batch: int = 16  # questions decoded together by one worker's scheduler
    max_open_docs: int = 16  # documents whose L1 a worker keeps loaded (`Engine.max_open_docs`; libraries)
    insecure: bool = False  # allow a non-loopback host without an API key
    drain_s: int = 30  # SIGTERM: seconds in-flight requests may run on
    metrics_dir: str | None = None  # prometheus_client multiprocess folder (several workers only)

    def __post_init__(self) -> None:
        if not 0 < self.port < 65536:
            raise ConfigError(f"--port must be in 1..65535, got {self.port}")
        if self.workers < 1:
            raise ConfigError(f"--workers must be >= 1, got {self.workers}")
        if self.max_batch < 1:
            raise ConfigError(f"--max-batch must be >= 1, got {self.max_batch}")
        if self.max_open_docs < 1:
            raise ConfigError(f"--max-open-docs must be >= 1, got {self.max_open_docs}")
        if self.max_body_bytes < 1024:
            raise ConfigError(f"--max-body-bytes must be >= 1024, got {self.max_body_bytes}")
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ConfigError("--tls-cert and --tls-key go together")
        if self.api_key is not None and not self.api_key.strip():
            raise ConfigError("--api-key is empty")

    def exposure_problem(self) -> str | None:
        """Why this config must not start, or None. A non-loopback host needs an API key (or --insecure)."""
        if is_loopback(self.host) or self.api_key or self.insecure:
            return None
        return (f"--host {self.host} is reachable from other machines: give an API key (--api-key or "
                f"ACRE_API_KEY, best with --tls-cert/--tls-key), or --insecure to serve without one")

    def to_env(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_env(cls) -> "ServeConfig":
        """The config `acre serve` left for its workers, or one from ACRE_STORE / ACRE_API_KEY alone
        (an app started by a plain `uvicorn acre_serve.app:create_app --factory`)."""
        raw = os.environ.get(ENV_VAR)
        if raw:
            known = {f.name for f in fields(cls)}
            return cls(**{k: v for k, v in json.loads(raw).items() if k in known})
        return cls(store=os.environ.get("ACRE_STORE") or None, api_key=os.environ.get("ACRE_API_KEY") or None)
