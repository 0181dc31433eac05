"""serve(cfg): the `acre serve` process: checks, the store daemon, then uvicorn with one or N workers.

1. Refuse a config that would expose the API without a key (non-loopback host, no --insecure).
2. Without --store, start a daemon of our own (own_daemon.py); every worker shares it.
3. Several workers: a fresh private folder for prometheus_client's multiprocess mode, set in the
   environment before any worker imports prometheus_client.
4. Hand the config to the workers in the environment (they are spawned and build the app from
   `acre_serve.app:create_app`).
5. Run uvicorn: in this process for one worker; else uvicorn's supervisor, which restarts a worker
   that dies (and stops everything if a worker fails before it starts serving).
6. SIGTERM or Ctrl-C: uvicorn stops accepting, lets in-flight requests finish (up to `drain_s`), runs
   each worker's shutdown (the scheduler finishes its questions), and only then is the daemon stopped.
"""
from __future__ import annotations

import logging
import os
import shutil
import signal
import sys
import tempfile

from .config import ENV_VAR, ConfigError, ServeConfig, is_loopback
from .own_daemon import OwnDaemon

log = logging.getLogger("acre_serve")

APP = "acre_serve.app:create_app"
WORKER_HEALTHCHECK_S = 30  # a worker busy on 2 shared cores may answer the supervisor's ping late


def _uvicorn_config(cfg: ServeConfig):
    import uvicorn

    return uvicorn.Config(APP, factory=True, host=cfg.host, port=cfg.port, workers=cfg.workers,
                          ssl_certfile=cfg.tls_cert, ssl_keyfile=cfg.tls_key, timeout_graceful_shutdown=cfg.drain_s,
                          timeout_worker_healthcheck=WORKER_HEALTHCHECK_S, log_level="info", access_log=False)


def _run_workers(config) -> None:
    from uvicorn.config import STARTUP_FAILURE
    from uvicorn.server import Server
    from uvicorn.supervisors.multiprocess import Multiprocess

    if config.workers == 1:
        server = Server(config)
        server.run()
        if not server.started:
            raise ConfigError("the server did not start (see the log above)")
        return
    supervisor = Multiprocess(config, sockets=[config.bind_socket()])
    supervisor.run()
    if any(p.exitcode == STARTUP_FAILURE for p in supervisor.processes):
        raise ConfigError("a worker failed to start (see the log above)")


def serve(cfg: ServeConfig) -> int:
    problem = cfg.exposure_problem()
    if problem:
        raise ConfigError(problem)
    if cfg.insecure and not cfg.api_key:
        log.warning("serving on %s without an API key (--insecure): anyone who can reach it can use it", cfg.host)
    elif cfg.api_key and not cfg.tls_cert and not is_loopback(cfg.host):
        log.warning("no TLS: the API key travels in clear text (give --tls-cert/--tls-key beyond localhost)")
    # uvicorn drains on SIGTERM, then raises the signal again: with this handler that ends `serve`
    # through its `finally` (the daemon is stopped) instead of killing the process on the spot.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    daemon = metrics_dir = None
    try:
        if not cfg.store:
            daemon = OwnDaemon().start()
            cfg.store = daemon.addr
            log.info("started a store daemon at %s", daemon.addr)
        if cfg.workers > 1:
            metrics_dir = tempfile.mkdtemp(prefix="acre-metrics-")
            os.environ["PROMETHEUS_MULTIPROC_DIR"] = cfg.metrics_dir = metrics_dir
        os.environ[ENV_VAR] = cfg.to_env()
        _run_workers(_uvicorn_config(cfg))
    finally:
        if daemon is not None:
            daemon.stop()
        if metrics_dir:
            shutil.rmtree(metrics_dir, ignore_errors=True)
    return 0
