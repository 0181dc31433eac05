"""The start-up check of the shared-memory folder's room against the RAM tier's cap.

The same-host fast path (shared.py) keeps every RAM-tier chunk in a file under /dev/shm. Containers
often give /dev/shm 64 MiB (Docker's default), far below a typical `--ram-bytes`; each chunk that does
not fit then stays on the heap and travels over the socket. Better to say so once, at start, with what
to do about it, than once per chunk.
"""
from __future__ import annotations

import os


def _fmt(n: int) -> str:
    return f"{n / (1 << 20):.0f} MiB" if n < (1 << 30) else f"{n / (1 << 30):.1f} GiB"


def shm_shortfall(folder: str, ram_bytes: int) -> str | None:
    """A one-paragraph message if `folder`'s free space is below `ram_bytes`, else None."""
    st = os.statvfs(folder)
    free = st.f_bavail * st.f_frsize
    if free >= ram_bytes:
        return None
    return (f"shared-memory folder {folder} has {_fmt(free)} free, less than --ram-bytes {_fmt(ram_bytes)}: "
            f"chunks beyond that stay on the daemon's heap and same-host clients get them over the socket "
            f"(slower). To fix it, give the folder more room (Docker: --shm-size={_gib_up(ram_bytes)}; "
            f"Kubernetes: an emptyDir with medium: Memory mounted on /dev/shm), or lower --ram-bytes to "
            f"{_fmt(free)} or less, or pass --no-shared to turn the shared-memory path off.")


def _gib_up(n: int) -> str:
    return f"{-(-n // (1 << 30))}g"
