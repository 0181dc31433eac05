"""acre_store: the tiered KV store of ACRE documents (RAM over Zarr v3 or LMDB), embedded or as a gRPC daemon.

    from acre_store import EmbeddedStore, connect
    with EmbeddedStore(path) as store:             # in-process, no socket
        ...
    with connect("unix:///tmp/acre.sock") as store:  # a daemon shared by many workers
        ...

Both implement `StoreAPI`: put, info, get_l1, fetch, fetch_async, prefetch, list, delete, pin, stats (a
`StoreStats`), close. `resolve_doc_id(store, ref)` turns an id, a unique id prefix or a name into an id.
"""
from .api import StoreAPI
from .doc_ref import resolve_doc_id
from .embedded import EmbeddedStore, default_store_path
from .errors import (DataLoss, DocumentNotFound, InvalidArgument, LayoutMismatch, ResourceExhausted, StoreError,
                     StoreUnavailable, Unauthenticated)
from .stats import StoreStats
from .types import DocLayout, DocMeta


def connect(addr: str, timeout: float = 30.0, **kw):
    """A gRPC client of the daemon at `addr` (`unix:///path` or `host:port`); `tls_ca=` and `token=`
    (defaults: $ACRE_STORE_TLS_CA, $ACRE_STORE_TOKEN) for a daemon that wants them (auth.py). A comma list
    of addresses gives a `MultiStoreClient` that routes each document to one daemon (multi_client.py)."""
    if "," in addr:
        from .multi_client import MultiStoreClient
        return MultiStoreClient.from_string(addr, timeout=timeout, **kw)
    from .client import StoreClient
    return StoreClient(addr, timeout=timeout, **kw)


__all__ = ["StoreAPI", "StoreStats", "EmbeddedStore", "connect", "default_store_path", "resolve_doc_id",
           "DocLayout", "DocMeta", "StoreError", "DocumentNotFound", "InvalidArgument", "LayoutMismatch",
           "ResourceExhausted", "DataLoss", "StoreUnavailable", "Unauthenticated"]
