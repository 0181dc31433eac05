"""CRC32C checksums of chunk layers and L1 parts (hardware-accelerated via google-crc32c, a zarr dependency).

A chunk's checksum is one CRC32C per layer, so a layer range can be verified, and sent, without
touching the other layers' bytes.
"""
from __future__ import annotations

import google_crc32c
import numpy as np


def crc32c(buf) -> int:
    """CRC32C of a bytes-like object (any contiguous buffer)."""
    return google_crc32c.value(memoryview(buf).cast("B"))


def layer_crcs(chunk: np.ndarray) -> list[int]:
    """One CRC32C per layer of a contiguous chunk [n_layers, 2, n_kv_heads, len_c, head_dim]."""
    flat = memoryview(np.ascontiguousarray(chunk).reshape(chunk.shape[0], -1).view(np.uint8))
    return [google_crc32c.value(flat[i]) for i in range(chunk.shape[0])]


def bad_layers(chunk: np.ndarray, expected: list[int], layer0: int = 0) -> list[int]:
    """Layers (absolute index) of `chunk` whose CRC differs from `expected[layer0:]`."""
    got = layer_crcs(chunk)
    return [layer0 + i for i, c in enumerate(got) if c != expected[layer0 + i]]
