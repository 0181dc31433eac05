"""StoreServer: the cache daemon — a `Store` behind gRPC (Store service + grpc.health.v1) on a unix
socket or TCP, shut down gracefully (health NOT_SERVING, in-flight calls drain, then the store closes).
"""
from __future__ import annotations

import logging
import os
import socket
import stat
from concurrent import futures
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from .config import StoreConfig
from .dataplane import SOCKET_PATH_MAX, DataPlaneServer, data_path, unix_path
from .auth import TokenInterceptor, server_credentials
from .errors import InvalidArgument, StoreUnavailable
from .metrics import StoreMetrics
from .service import StoreServicer, add_store_servicer
from .shm_space import shm_shortfall
from .store import Store
from .stream_guard import StreamGuard
from .wire import CHANNEL_OPTIONS

log = logging.getLogger(__name__)

SERVICE_NAME = "acre.store.v1.Store"
DEFAULT_LISTEN = "unix:///tmp/acre-store.sock"


def _check_socket_path(path: str, addr: str) -> None:
    """Refuse a socket path a live daemon listens on; remove a stale one left by a crash."""
    if not os.path.lexists(path):
        parent = os.path.dirname(path) or "."
        if not os.path.isdir(parent):
            raise StoreUnavailable(f"cannot listen on {addr}: directory {parent} does not exist")
        return
    if not stat.S_ISSOCK(os.lstat(path).st_mode):
        raise StoreUnavailable(f"cannot listen on {addr}: {path} exists and is not a socket")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.settimeout(1.0)
        probe.connect(path)
    except (ConnectionRefusedError, FileNotFoundError):
        log.warning("removing stale socket %s (no daemon answers on it)", path)
        os.unlink(path)
        return
    except OSError as e:
        raise StoreUnavailable(f"cannot listen on {addr}: {path}: {e}") from None
    finally:
        probe.close()
    raise StoreUnavailable(f"cannot listen on {addr}: another daemon is already serving on {path}")


@dataclass
class ServerConfig:
    listen: str = DEFAULT_LISTEN
    extra_listen: tuple[str, ...] = ()  # more addresses served by the same daemon (e.g. a unix socket and TCP)
    workers: int = 16      # gRPC handler threads (each streaming call holds one)
    control_threads: int = 4  # of those, kept for unary calls: streaming calls may hold the rest
    stream_idle_s: float = 60.0  # a streaming call that reads or sends nothing for this long is cancelled
    grace_s: float = 10.0  # how long in-flight calls may run on at shutdown
    shared: bool = True    # offer the same-host shared-memory fast path on unix sockets
    data_plane: bool = True  # also serve Fetch on <unix socket path>.data (dataplane.py)
    # Security (auth.py): TLS on TCP listeners, a bearer token on every listener; a TCP listener with
    # neither is refused unless `insecure`.
    tls_cert: str | None = None
    tls_key: str | None = None
    tls_client_ca: str | None = None  # mutual TLS: clients must present a certificate signed by this CA
    token: str | None = None
    insecure: bool = False
    metrics_port: int | None = None  # Prometheus /metrics (metrics.py); None: off, 0: any free port
    metrics_host: str = "127.0.0.1"


def _check_tcp_security(config: ServerConfig, addrs) -> None:
    """Refuse a plain TCP listener unless asked for explicitly; warn when it is."""
    if (config.tls_cert is None) != (config.tls_key is None):
        raise InvalidArgument("--tls-cert and --tls-key go together")
    if config.tls_client_ca and not config.tls_cert:
        raise InvalidArgument("--tls-client-ca needs --tls-cert and --tls-key")
    tcp = [a for a in addrs if unix_path(a) is None]
    if tcp and config.token and not config.tls_cert:
        log.warning("%s: a token without TLS travels in clear text; add --tls-cert/--tls-key off a trusted "
                    "network", ", ".join(tcp))
    if not tcp or config.tls_cert or config.token:
        return
    if not config.insecure:
        raise InvalidArgument(f"refusing to listen on {', '.join(tcp)} without TLS or a token: pass --tls-cert/"
                              f"--tls-key and/or --token-file (or $ACRE_STORE_TOKEN), or --insecure to let anyone "
                              f"who reaches the port read, write and delete every document")
    log.warning("INSECURE: %s has no TLS and no token; anyone who reaches it can read, write and delete "
                "every document", ", ".join(tcp))


class StoreServer:
    def __init__(self, store_config: StoreConfig, config: ServerConfig = ServerConfig()):
        self.config = config
        self.addr = config.listen
        self.shared = None
        self.metrics = None
        _check_tcp_security(config, (config.listen, *config.extra_listen))
        # Owner-only files whatever umask the daemon was started with: data 0600/0700, sockets and shared
        # files 0600 (the daemon's clients are processes of the same user; see docs/store.md).
        os.umask(0o077)
        local = any(unix_path(a) is not None for a in (config.listen, *config.extra_listen))
        if config.shared and local:  # a unix socket: clients on this host can map the daemon's files
            from .shared import SharedArena
            self.shared = SharedArena()
            shortfall = shm_shortfall(self.shared.dir, store_config.ram_bytes)
            if shortfall:
                log.warning("%s", shortfall)
        try:
            # The store takes the data directory's lock first: a busy store fails here.
            self.store = Store(store_config, allocator=self.shared)
        except BaseException:
            if self.shared is not None:
                self.shared.close()
            raise
        if self.shared is not None:
            self.shared.ram = self.store.ram
        try:
            addrs = (config.listen, *config.extra_listen)
            for a in addrs:
                if unix_path(a) is not None:
                    _check_socket_path(unix_path(a), a)
            interceptors = [TokenInterceptor(config.token)] if config.token else []
            if config.metrics_port is not None:
                self.metrics = StoreMetrics(lambda: self.servicer.daemon_stats())
                interceptors.append(self.metrics.interceptor())
            # so_reuseport 0: a second daemon on a TCP port in use fails to start instead of taking a share of
            # its connections.
            self.server = grpc.server(futures.ThreadPoolExecutor(config.workers, thread_name_prefix="acre-rpc"),
                                      options=CHANNEL_OPTIONS + [("grpc.so_reuseport", 0)],
                                      interceptors=interceptors)
            tls = (server_credentials(config.tls_cert, config.tls_key, config.tls_client_ca)
                   if config.tls_cert else None)
            self.guard = StreamGuard(max_streams=max(1, config.workers - config.control_threads),
                                     max_per_client=max(1, (config.workers - config.control_threads) // 2),
                                     idle_s=config.stream_idle_s)
            self.servicer = StoreServicer(self.store, self.shared, self.guard)
            add_store_servicer(self.servicer, self.server)
            self.health = health.HealthServicer()
            health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
            self.addrs = []
            for a in addrs:
                try:
                    if tls is not None and unix_path(a) is None:  # unix sockets: owner-only instead
                        port = self.server.add_secure_port(a, tls)
                    else:
                        port = self.server.add_insecure_port(a)
                except RuntimeError:
                    raise StoreUnavailable(f"cannot listen on {a}: the address is in use (another daemon?) "
                                           "or cannot be bound") from None
                if port == 0:
                    raise StoreUnavailable(f"cannot listen on {a} (address in use?)")
                self.addrs.append(a[:-1] + str(port) if unix_path(a) is None and a.endswith(":0") else a)
            self.addr = self.addrs[0]
            self.data_planes: list[DataPlaneServer] = []
            for a in addrs if config.data_plane else ():
                path = unix_path(a)
                if path is None:
                    continue
                dpath = data_path(path)
                if len(dpath.encode()) > SOCKET_PATH_MAX:
                    log.warning("no data plane for %s: %s is longer than a unix socket path may be "
                                "(Fetch goes over gRPC)", a, dpath)
                    continue
                _check_socket_path(dpath, "unix://" + dpath)
                self.data_planes.append(DataPlaneServer(dpath, self.servicer, config.token))
            self.servicer.data_planes = self.data_planes
        except BaseException:
            for dp in getattr(self, "data_planes", ()):
                dp.stop(0)
                _unlink(dp.path)
            if getattr(self, "guard", None) is not None:
                self.guard.close()
            self.store.close()
            if self.shared is not None:
                self.shared.close()
            raise

    def start(self) -> "StoreServer":
        if self.metrics is not None:  # first: a port in use stops the start before any client is served
            try:
                self.metrics_port = self.metrics.serve(self.config.metrics_port, self.config.metrics_host)
            except OSError as e:
                self.stop(0)
                raise StoreUnavailable(f"cannot serve metrics on {self.config.metrics_host}:"
                                       f"{self.config.metrics_port}: {e}") from None
            log.info("metrics on http://%s:%d/metrics", self.config.metrics_host, self.metrics_port)
        self.server.start()
        for dp in self.data_planes:
            dp.start()
        for path in [unix_path(a) for a in self.addrs] + [dp.path for dp in self.data_planes]:
            if path is not None:
                os.chmod(path, 0o600)
        os.chmod(self.store.path, 0o700)  # made by an older daemon, or by hand, under another umask
        for name in ("", SERVICE_NAME):
            self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        log.info("serving %s on %s", self.store.path, ", ".join(self.addrs))
        return self

    def stop(self, grace: float | None = None) -> None:
        """Health NOT_SERVING, refuse new calls, let in-flight ones finish within the grace, close."""
        self.health.enter_graceful_shutdown()
        grace = self.config.grace_s if grace is None else grace
        stopped = self.server.stop(grace)  # gRPC and the data planes drain side by side
        for dp in self.data_planes:
            dp.stop(grace)
        stopped.wait()
        if self.metrics is not None:
            self.metrics.close()
        self.guard.close()
        self.store.close()
        if self.shared is not None:
            self.shared.close()
        for a in self.addrs:
            if unix_path(a) is not None:
                _unlink(unix_path(a))
        for dp in self.data_planes:
            _unlink(dp.path)
        log.info("stopped")


def _unlink(path: str) -> None:
    try:
        if os.path.lexists(path):
            os.unlink(path)
    except OSError:
        pass
