"""Same-host data plane: Fetch over a plain unix stream socket, beside gRPC.

Measured on the 2-core dev machine (4 MiB per call, unix socket): gRPC-Python moves 0.26-0.64 GB/s,
sync or asyncio server and client, 1 or 4 MiB messages, 1 or 8 chunks per call, and no channel option
changes that; a plain AF_UNIX socket in Python moves 2.7-3 GB/s and answers a small request in well
under 0.1 ms (a gRPC call costs about 0.5 ms). So a daemon listening on the unix socket P also serves
Fetch on P + ".data" (protocol ACRE-DATA/1, written up in proto/acre/store/v1/store.proto): the same
FetchRequest and FetchFrame messages, one record per chunk, the payload sent from the cache with
sendmsg (no copy in user space) and received straight into the array the client returns (one copy
in all, kernel to user). gRPC keeps everything else (Put, GetL1, Info, List, Delete, Stats, health)
and serves Fetch to TCP clients and to any client for which the data socket is missing or broken.

The client checks every payload against its per-layer CRC32C exactly as on the gRPC path; errors
travel as the same status codes and come back as the same exceptions.
"""
from __future__ import annotations

import json
import logging
import os
import socket
import struct
import threading
import time
from typing import Iterator

import grpc
import numpy as np

from ._proto import store_pb2 as pb
from .auth import token_ok
from .errors import DataLoss, StoreError, StoreUnavailable, error_for_code

log = logging.getLogger(__name__)

SUFFIX = ".data"
HELLO = b"ACRE-DATA/1\n"
REC = struct.Struct("<BIQ")  # kind, head bytes, payload bytes
K_FETCH, K_FRAME, K_END, K_ERROR, K_AUTH = 1, 2, 3, 4, 5  # K_AUTH: the token, right after the hello
MAX_HEAD = 1 << 20  # a request or a frame header; a larger one is a protocol error
MAX_CONNECTIONS = 64  # beyond this, new clients are refused and use gRPC
SOCKET_PATH_MAX = 107  # sun_path


def unix_path(addr: str) -> str | None:
    """The socket path of a `unix:` address, else None."""
    if addr.startswith("unix://"):
        return addr[len("unix://"):]
    if addr.startswith("unix:"):
        return addr[len("unix:"):]
    return None


def data_path(grpc_unix_path: str) -> str:
    """Where a daemon listening on the unix socket `grpc_unix_path` serves its data plane."""
    return grpc_unix_path + SUFFIX


class ProtocolError(Exception):
    pass


def _recv_into(sock: socket.socket, buf) -> None:
    mv = memoryview(buf).cast("B")
    got, n = 0, len(mv)
    while got < n:
        k = sock.recv_into(mv[got:])
        if k == 0:
            raise ConnectionResetError("connection closed by the peer")
        got += k


def _recv(sock: socket.socket, n: int) -> bytes:
    buf = bytearray(n)
    _recv_into(sock, buf)
    return bytes(buf)


def _send(sock: socket.socket, buffers: list) -> None:
    """sendmsg until every byte of `buffers` is out (it may send part of them)."""
    bufs = [memoryview(b).cast("B") for b in buffers if len(b)]
    while bufs:
        n = sock.sendmsg(bufs)
        while n:
            if n >= len(bufs[0]):
                n -= len(bufs[0])
                bufs.pop(0)
            else:
                bufs[0] = bufs[0][n:]
                n = 0


def _error_record(code: grpc.StatusCode, details: str) -> list:
    head = json.dumps({"code": code.name, "details": details}).encode()
    return [REC.pack(K_ERROR, len(head), 0), head]


# -- daemon side ----------------------------------------------------------------------------------

class DataPlaneServer:
    """Serves `servicer.fetch_chunks` on a unix socket, one thread per connection."""

    def __init__(self, path: str, servicer, token: str | None = None):
        self.path = path
        self.servicer = servicer
        self.token = token  # when set, a connection must send it (K_AUTH) before its first call, as on gRPC
        self._lock = threading.Lock()
        self._conns: dict[socket.socket, bool] = {}  # connection -> busy (a call in progress)
        self._pids: dict[socket.socket, int | None] = {}  # connection -> the client's pid
        self._stopping = False
        self._idle = threading.Condition(self._lock)
        self.calls = self.chunks = self.bytes = self.refused = self.errors = 0
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self._listener.bind(path)
            self._listener.listen(16)
        except OSError:
            self._listener.close()
            raise
        self._thread = threading.Thread(target=self._accept_loop, daemon=True, name="acre-data-accept")

    def start(self) -> "DataPlaneServer":
        self._thread.start()
        return self

    def _accept_loop(self) -> None:
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return  # listener closed: stopping
            with self._lock:
                if self._stopping or len(self._conns) >= MAX_CONNECTIONS:
                    self.refused += 1
                    conn.close()
                    continue
                self._conns[conn] = False
            threading.Thread(target=self._serve_conn, args=(conn,), daemon=True, name="acre-data").start()

    def _serve_conn(self, conn: socket.socket) -> None:
        pid = _peer_pid(conn)  # the client process: it owns the leases of its calls
        with self._lock:
            self._pids[conn] = pid
        try:
            if pid is None:
                _send(conn, _error_record(grpc.StatusCode.PERMISSION_DENIED, "the data socket serves this user only"))
                return
            if _recv(conn, len(HELLO)) != HELLO:
                _send(conn, _error_record(grpc.StatusCode.FAILED_PRECONDITION, "expected the ACRE-DATA/1 hello"))
                return
            conn.sendall(HELLO)
            authed = self.token is None
            while True:
                try:
                    hdr = _recv(conn, REC.size)
                except ConnectionResetError:
                    return  # the client closed the connection between calls
                kind, hlen, plen = REC.unpack(hdr)
                if kind == K_AUTH and hlen <= MAX_HEAD and not plen:
                    presented = _recv(conn, hlen)
                    authed = authed or token_ok(self.token, presented)
                    continue
                if not authed:
                    with self._lock:
                        self.errors += 1
                    _send(conn, _error_record(grpc.StatusCode.UNAUTHENTICATED,
                                              "wrong or missing token for this store daemon's data socket"))
                    return
                if kind != K_FETCH or hlen > MAX_HEAD or plen:
                    _send(conn, _error_record(grpc.StatusCode.INVALID_ARGUMENT,
                                              f"bad data-plane record (kind {kind}, head {hlen}, payload {plen})"))
                    return
                head = _recv(conn, hlen)
                with self._lock:
                    if self._stopping:
                        _send(conn, _error_record(grpc.StatusCode.UNAVAILABLE, "the daemon is shutting down"))
                        return
                    self._conns[conn] = True
                # A client that stops reading mid-call is dropped after the daemon's stream idle time (the
                # connection is then closed; it holds a thread until then). Between calls it may stay idle.
                conn.settimeout(getattr(self.servicer.guard, "idle_s", None))
                try:
                    self._call(conn, head, pid)
                finally:
                    conn.settimeout(None)
                    with self._lock:
                        self._conns[conn] = False
                        self._idle.notify_all()
        except OSError as e:
            log.debug("data-plane connection ended: %s", e)
        finally:
            with self._lock:
                self._conns.pop(conn, None)
                self._pids.pop(conn, None)
                last = pid not in self._pids.values()
                self._idle.notify_all()
            conn.close()
            if last and pid is not None:  # the client's last connection closed: so do its leases
                self.servicer.client_gone(pid)

    def _call(self, conn: socket.socket, head: bytes, pid: int) -> None:
        with self._lock:
            self.calls += 1
        end = [REC.pack(K_END, 0, 0)]
        ended = False
        try:
            try:
                request = pb.FetchRequest.FromString(head)
            except Exception as e:  # noqa: BLE001 - a request protobuf cannot parse
                raise ProtocolError(f"malformed FetchRequest: {e}") from None
            n = len(request.chunk_ids)
            for i, (frame, data) in enumerate(self.servicer.fetch_chunks(request, pid)):
                if ended:
                    self.servicer.unsent(frame)
                    raise RuntimeError(f"more frames than the {n} chunks asked for")
                h = frame.SerializeToString()
                # One record per requested chunk: the last one and the call's end go out in one write (one
                # system call here, one wake-up of the client; a one-chunk call on the fast path is little else).
                last = i == n - 1
                try:
                    _send(conn, [REC.pack(K_FRAME, len(h), len(data)), h, data] + (end if last else []))
                except OSError:
                    self.servicer.unsent(frame)  # the client went away: this frame's lease ends now
                    raise
                ended = last
                with self._lock:
                    self.chunks += 1
                    self.bytes += len(data)
            if not ended:
                _send(conn, end)
        except OSError:
            raise
        except Exception as e:  # noqa: BLE001 - StoreError: its code; anything else: INTERNAL, as on gRPC
            with self._lock:
                self.errors += 1
            if ended:  # too late to report (the client took the call as done): drop the connection
                log.exception("error in a data-plane Fetch after its end was sent")
                raise ConnectionAbortedError(str(e)) from None
            if isinstance(e, (StoreError, ProtocolError)):
                code = e.code if isinstance(e, StoreError) else grpc.StatusCode.INVALID_ARGUMENT
                _send(conn, _error_record(code, str(e)))
            else:
                log.exception("internal error in a data-plane Fetch")
                _send(conn, _error_record(grpc.StatusCode.INTERNAL, f"internal error: {type(e).__name__}: {e}"))

    def stop(self, grace: float) -> None:
        """Refuse new connections and calls; let calls in progress finish within `grace`; close."""
        with self._lock:
            self._stopping = True
        try:
            self._listener.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._listener.close()
        if self._thread.ident is not None:
            self._thread.join(5)
        deadline = time.monotonic() + grace
        with self._lock:
            for conn, busy in self._conns.items():
                if not busy:  # idle: waiting for the next request, which will not come
                    _shutdown(conn)
            while any(self._conns.values()) and time.monotonic() < deadline:
                self._idle.wait(max(0.0, deadline - time.monotonic()))
            for conn in self._conns:
                _shutdown(conn)

    def stats(self) -> dict:
        with self._lock:
            return {"path": self.path, "connections": len(self._conns), "calls": self.calls, "chunks": self.chunks,
                    "bytes": self.bytes, "errors": self.errors, "refused": self.refused}


def _peer_pid(conn: socket.socket) -> int | None:
    """The pid of the process at the other end, if it runs as this user (or root); else None."""
    try:
        pid, uid, _ = struct.unpack("3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i")))
    except (OSError, AttributeError):
        return None
    return pid if uid in (os.getuid(), 0) else None


def _shutdown(conn: socket.socket) -> None:
    try:
        conn.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


# -- client side ----------------------------------------------------------------------------------

class DataPlaneBroken(Exception):
    """The data socket is missing, refused the connection or broke: use gRPC instead."""


class DataPlaneClient:
    """Connections to a daemon's data socket, one per call in progress (kept for reuse)."""

    RETRY_AFTER_S = 1.0  # after a failure, gRPC carries Fetch this long before the data socket is tried again

    def __init__(self, path: str, timeout: float, connect_timeout: float = 2.0, token: str | None = None):
        self.path = path
        self.token = token
        self.timeout, self.connect_timeout = timeout, connect_timeout
        self._idle: list[socket.socket] = []
        self._lock = threading.Lock()
        self._down_until = 0.0

    def usable(self) -> bool:
        return time.monotonic() >= self._down_until

    def mark_down(self) -> None:
        self._down_until = time.monotonic() + self.RETRY_AFTER_S
        self.close()

    def _connect(self) -> socket.socket:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.settimeout(self.connect_timeout)
            s.connect(self.path)
            s.sendall(HELLO)
            if self.token:
                t = self.token.encode()
                _send(s, [REC.pack(K_AUTH, len(t), 0), t])
            if _recv(s, len(HELLO)) != HELLO:
                raise ConnectionError(f"{self.path} does not speak ACRE-DATA/1")
            s.settimeout(self.timeout)
        except BaseException:
            s.close()
            raise
        return s

    def _take(self) -> socket.socket:
        with self._lock:
            if self._idle:
                return self._idle.pop()
        return self._connect()

    def _give_back(self, s: socket.socket) -> None:
        with self._lock:
            self._idle.append(s)

    def fetch(self, req: pb.FetchRequest, leases: list[int]) -> Iterator[tuple[pb.FetchFrame, np.ndarray | None]]:
        """Frames of one call: (header, payload received into a fresh uint8 array, or None when shared).

        Raises DataPlaneBroken before the first frame if the socket fails (the caller uses gRPC), the
        call's StoreError if the daemon reports one. A consumer that stops early gets the leases of
        shared frames still on their way appended to `leases`."""
        try:
            s = self._take()
            h = req.SerializeToString()
            _send(s, [REC.pack(K_FETCH, len(h), 0), h])
        except socket.timeout as e:
            raise StoreUnavailable(f"store data socket {self.path} did not answer in time ({e})") from None
        except OSError as e:
            raise DataPlaneBroken(str(e)) from None
        clean, first = False, True
        try:
            while True:
                try:
                    kind, hlen, plen = REC.unpack(_recv(s, REC.size))
                    if hlen > MAX_HEAD:
                        raise DataLoss(f"data socket {self.path}: record header of {hlen} bytes")
                    head = _recv(s, hlen)
                    buf = None
                    if plen:
                        buf = np.empty(plen, np.uint8)
                        _recv_into(s, buf)
                except socket.timeout as e:
                    raise StoreUnavailable(f"store data socket {self.path} did not answer in time ({e})") from None
                except OSError as e:
                    if first:
                        raise DataPlaneBroken(str(e)) from None
                    raise StoreUnavailable(f"store data socket {self.path} broke mid-call: {e}") from None
                first_frame, first = first, False
                if kind == K_FRAME:
                    try:
                        frame = pb.FetchFrame.FromString(head)
                    except Exception as e:  # noqa: BLE001
                        raise DataLoss(f"malformed Fetch frame for {req.doc_id}: {e}") from None
                    yield frame, buf
                elif kind == K_END:
                    clean = True
                    return
                elif kind == K_ERROR:
                    clean = True
                    err = json.loads(head)
                    code = getattr(grpc.StatusCode, err.get("code", ""), grpc.StatusCode.UNKNOWN)
                    if code == grpc.StatusCode.UNAVAILABLE and first_frame:
                        raise DataPlaneBroken(err.get("details", ""))  # shutting down: gRPC retries with backoff
                    raise error_for_code(code, err.get("details", ""))
                else:
                    raise DataLoss(f"data socket {self.path}: unknown record kind {kind}")
        except GeneratorExit:
            clean = self._drain(s, leases)
            raise
        finally:
            if clean:
                self._give_back(s)
            else:
                s.close()

    def _drain(self, s: socket.socket, leases: list[int]) -> bool:
        """The consumer stopped early: read on while frames are shared refs (collecting their leases);
        True if the call's end arrived (the connection can be reused)."""
        try:
            s.settimeout(min(self.timeout, 5.0))
            while True:
                kind, hlen, plen = REC.unpack(_recv(s, REC.size))
                if plen or hlen > MAX_HEAD:
                    return False  # payload: not worth receiving
                head = _recv(s, hlen)
                if kind == K_FRAME:
                    frame = pb.FetchFrame.FromString(head)
                    if frame.HasField("shared"):
                        leases.append(frame.shared.lease)
                elif kind in (K_END, K_ERROR):
                    s.settimeout(self.timeout)
                    return True
                else:
                    return False
        except Exception:  # noqa: BLE001 - the connection is closed instead
            return False

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for s in idle:
            s.close()
