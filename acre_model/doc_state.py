"""A document's bi-layer state on the worker: the L1 attend set, the locator index, the proxy map.

Stored in the cache daemon as named arrays ("L1 parts"); loaded to the worker's device once per
document and cached there.

  l1_keys      [n_layers, n_kv_heads, n_l1, head_dim]  pre-RoPE keys of the attend set
  l1_values    [n_layers, n_kv_heads, n_l1, head_dim]
  l1_pos       [n_l1]    original positions (sorted)
  l1_chunk     [n_l1]    proxy map: the L2 chunk of each entry
  l1_always    [n_l1]    1 for sink and recent entries (kept even when not representatives)
  index_keys   [n_index_heads, n_tokens, head_dim]  keys of every token at the retrieval heads, rotated at
               their original positions (float16, or int8 with index_scale [n_index_heads, n_tokens])
  h2o_scores   [n_layers, n_tokens]  attention each token received during prefill (sampled query rows)
  snapkv_scores[n_layers, n_tokens]  attention from the document's own last tokens
  quest_kmin,  [n_layers, n_kv_heads, n_pages, head_dim]  Quest's per-page elementwise min / max of the
  quest_kmax   rotated keys (float16, rounded outwards so they still bound the keys); pages of
               `quest_page` tokens inside each chunk
  infllm_keys  [n_layers, n_kv_heads, n_chunks, infllm_reps, head_dim]  InfLLM's representative keys
               (rotated, float16); infllm_pos [n_layers, n_kv_heads, n_chunks, infllm_reps] their positions
  win_keys,    [n_local, n_kv_heads, n_win, head_dim]  a hybrid model's local layers that are not stored in
  win_values   L2: their only entries, the document's last `sliding_window` tokens and its first `n_sink`
               (pre-RoPE); win_pos [n_win] their positions (sorted)

On a hybrid (local/global) model stored with `store_layers="global"`, "n_layers" above is the stored
(global) layers only, in model order (`stored_layers` in the metadata); h2o/snapkv scores keep every layer.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np
import torch


@dataclass(frozen=True)
class LayoutConfig:
    """How a document's KV is split into L1 and L2 (part of the document's content address)."""

    chunk_size: int = 32  # measured: same recall as 64, a third less KV for the same answers (docs/algorithm.md)
    n_sink: int = 32  # covers the chat template's system prompt and the user header
    n_recent: int = 64
    reps_per_chunk: int = 1
    rep_mode: str = "attention"  # "attention" (highest H2O score in the chunk) | "uniform"
    index_int8: bool = False
    snapkv_window: int = 32
    # The peers' metadata (policies `quest` and `infllm`; 0: not stored). New fields change every new
    # document's id, so a document ingested before they existed is never mistaken for one that has them.
    quest_page: int = 16  # tokens per Quest page (the paper's 16): min/max of keys per page, 2 pages a chunk
    infllm_reps: int = 1  # InfLLM representative tokens per chunk (the paper's 4 per 128-token block)
    # Which layers L2 (and the attend set) hold: "global" the layers that attend globally (every layer of
    # a Llama; a hybrid model's local layers then keep only the document's last window, in L1) or "all".
    # Left out of the document id unless it changes the stored layers (a Llama's ids are unchanged).
    store_layers: str = "global"

    def __post_init__(self) -> None:
        if self.chunk_size < 1 or self.n_sink < 0 or self.n_recent < 0 or self.reps_per_chunk < 0:
            raise ValueError("layout: chunk_size >= 1, n_sink/n_recent/reps_per_chunk >= 0")
        if self.reps_per_chunk > self.chunk_size or self.infllm_reps > self.chunk_size:
            raise ValueError("layout: reps_per_chunk and infllm_reps cannot exceed chunk_size")
        if self.quest_page < 0 or self.infllm_reps < 0:
            raise ValueError("layout: quest_page and infllm_reps must be >= 0 (0: not stored)")
        if self.store_layers not in ("global", "all"):
            raise ValueError(f"layout: store_layers must be 'global' or 'all', got {self.store_layers!r}")
        if self.rep_mode not in ("attention", "uniform"):
            raise ValueError(f"layout: rep_mode must be 'attention' or 'uniform', got {self.rep_mode!r}")


def stored_layers(cfg, store_layers: str = "global") -> list[int]:
    """The model layers a document's L2 holds under `store_layers` (see LayoutConfig)."""
    return list(range(cfg.num_hidden_layers)) if store_layers == "all" else cfg.global_layers


def to_numpy(t: torch.Tensor) -> np.ndarray:
    """A CPU numpy array of t; bfloat16 travels as its uint16 bit pattern."""
    t = t.detach().cpu().contiguous()
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().view(np.uint16)
    return t.numpy()


def from_numpy(a: np.ndarray, dtype: torch.dtype, device) -> torch.Tensor:
    """Inverse of to_numpy: uint16 arrays are bfloat16 bit patterns when dtype is bfloat16.

    A read-only array (the store hands out read-only views of its shared memory) is copied once into
    memory the tensor owns when the result would otherwise alias it (CPU); for another device the
    transfer itself is the copy, and the array is only read."""
    if not a.flags.writeable:
        if torch.device(device).type == "cpu":
            a = np.array(a)  # writable, contiguous: the tensor must not alias read-only memory
        else:
            with warnings.catch_warnings():  # torch warns on non-writable arrays; .to(device) copies
                warnings.simplefilter("ignore", UserWarning)
                return from_numpy_readonly(a, dtype, device)
    t = host_tensor(a, dtype)
    return t.to(device=device, dtype=dtype if t.is_floating_point() else t.dtype, non_blocking=True)


def host_tensor(a: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
    """A CPU tensor over the array's memory (no copy unless it is not contiguous); uint16 arrays are
    bfloat16 bit patterns when dtype is bfloat16."""
    if dtype == torch.bfloat16 and a.dtype == np.uint16:
        return torch.from_numpy(np.ascontiguousarray(a).view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(np.ascontiguousarray(a))


def from_numpy_readonly(a: np.ndarray, dtype: torch.dtype, device) -> torch.Tensor:
    """from_numpy for a read-only array and a non-CPU device: the tensor over it is read only by the copy."""
    t = host_tensor(a, dtype)
    # Synchronous: the source may be a mapping that ends when the array is dropped.
    return t.to(device=device, dtype=dtype if t.is_floating_point() else t.dtype)


def quantize_int8(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x [..., D] -> (int8 [..., D], scale [...]) with symmetric per-row scales."""
    scale = x.abs().amax(-1).clamp_min(1e-8) / 127.0
    return (x / scale[..., None]).round().clamp(-127, 127).to(torch.int8), scale


def chunks_of(token_span: tuple[int, int], chunk_size: int) -> list[int]:
    """The chunks of `chunk_size` tokens that hold tokens [a, b), ascending."""
    a, b = token_span
    return list(range(a // chunk_size, (b - 1) // chunk_size + 1))


@dataclass
class DocState:
    doc_id: str
    n_tokens: int
    chunk_size: int
    l1_keys: torch.Tensor
    l1_values: torch.Tensor
    l1_pos: torch.Tensor
    l1_chunk: torch.Tensor
    l1_always: torch.Tensor
    index_heads: list[tuple[int, int]]
    index_keys: torch.Tensor | None  # [n_index_heads, n_tokens, D] fp32, rotated
    h2o_scores: torch.Tensor | None
    snapkv_scores: torch.Tensor | None
    extra: dict = field(default_factory=dict)  # the document's metadata extras (layout, heads, n_l1, ...)
    index_nbytes: int = 0  # stored bytes of the locator index
    kv_nbytes: int = 0  # stored bytes of the document's full KV (all L2 chunks)
    quest_kmin: torch.Tensor | None = None  # [L, Hkv, n_pages, D] float16 (None: not stored)
    quest_kmax: torch.Tensor | None = None
    infllm_keys: torch.Tensor | None = None  # [L, Hkv, n_chunks, r, D] float16 (None: not stored)
    infllm_pos: torch.Tensor | None = None  # [L, Hkv, n_chunks, r] long
    # A hybrid model stored with its global layers only: the model layers L2/L1/quest/infllm hold (in
    # that order; None: every layer), and the unstored (local) layers' window entries.
    stored_layers: list[int] | None = None
    win_layers: list[int] = field(default_factory=list)  # local layers not stored, in model order
    win_keys: torch.Tensor | None = None  # [n_win_layers, Hkv, n_win, D] pre-RoPE
    win_values: torch.Tensor | None = None
    win_pos: torch.Tensor | None = None  # [n_win] original positions, ascending
    name: str = ""  # the document's human-readable name (metadata; may be empty)

    def slot(self, layer: int) -> int:
        """Index of a stored model layer in the stored arrays (l1_keys, L2 chunks, quest/infllm)."""
        if self.stored_layers is None:
            return layer
        try:
            return self.stored_layers.index(layer)
        except ValueError:
            raise KeyError(f"layer {layer} is not stored for document {self.doc_id[:12]}") from None

    def is_stored(self, layer: int) -> bool:
        return layer not in self.win_layers

    def window_of(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(k pre-RoPE, v) [Hkv, n_win, D] of an unstored local layer's window entries."""
        i = self.win_layers.index(layer)
        return self.win_keys[i], self.win_values[i]

    def pass1_entries(self, layer: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(k pre-RoPE, v, positions) a question sees before refill at `layer`: the attend set of a stored
        layer; on an unstored local layer its window entries (sinks are outside the window at exact
        positions, so they are left out)."""
        if self.is_stored(layer):
            s = self.slot(layer)
            return self.l1_keys[s], self.l1_values[s], self.l1_pos
        k, v = self.window_of(layer)
        keep = self.win_pos >= self.n_tokens - int(self.extra.get("window", self.n_tokens))
        return k[:, keep], v[:, keep], self.win_pos[keep]

    @property
    def layout(self) -> LayoutConfig:
        """How the document was split (from its metadata; the defaults for a document that has none)."""
        return LayoutConfig(**self.extra.get("layout", {}))

    @property
    def n_chunks(self) -> int:
        return -(-self.n_tokens // self.chunk_size)

    @property
    def n_l1(self) -> int:
        return int(self.l1_pos.numel())

    def chunk_len(self, c: int) -> int:
        """Tokens in chunk c (the last chunk may be shorter)."""
        return min(self.chunk_size, self.n_tokens - c * self.chunk_size)

    def chunks_of(self, token_span: tuple[int, int]) -> list[int]:
        """The chunks holding tokens [a, b) of the document, ascending."""
        a, b = token_span
        if not 0 <= a < b <= self.n_tokens:
            raise ValueError(f"token span {token_span} is not inside the document's {self.n_tokens} tokens")
        return chunks_of(token_span, self.chunk_size)

    @classmethod
    def from_parts(cls, doc_id: str, meta_extra: dict, parts: dict[str, np.ndarray], n_tokens: int,
                   chunk_size: int, dtype: torch.dtype, device, kv_nbytes: int = 0) -> "DocState":
        def t(name, dt=None):
            if name not in parts:
                return None
            return from_numpy(parts[name], dt or dtype, device)

        idx = None
        index_nbytes = 0
        if "index_keys" in parts:
            index_nbytes = parts["index_keys"].nbytes + (parts["index_scale"].nbytes if "index_scale" in parts else 0)
            raw = torch.from_numpy(np.ascontiguousarray(parts["index_keys"]))
            if raw.dtype == torch.int8:
                scale = torch.from_numpy(np.ascontiguousarray(parts["index_scale"])).float()
                idx = raw.float() * scale[..., None]
            else:
                idx = raw.float()
            idx = idx.to(device)
        return cls(
            doc_id=doc_id, n_tokens=n_tokens, chunk_size=chunk_size,
            l1_keys=t("l1_keys"), l1_values=t("l1_values"),
            l1_pos=t("l1_pos", torch.long).long(), l1_chunk=t("l1_chunk", torch.long).long(),
            l1_always=t("l1_always", torch.bool).bool(),
            index_heads=[tuple(h) for h in meta_extra.get("index_heads", [])],
            index_keys=idx,
            h2o_scores=t("h2o_scores", torch.float32), snapkv_scores=t("snapkv_scores", torch.float32),
            extra=meta_extra, index_nbytes=index_nbytes, kv_nbytes=kv_nbytes,
            quest_kmin=t("quest_kmin", torch.float16), quest_kmax=t("quest_kmax", torch.float16),
            infllm_keys=t("infllm_keys", torch.float16),
            infllm_pos=None if "infllm_pos" not in parts else t("infllm_pos", torch.long).long(),
            stored_layers=meta_extra.get("stored_layers"),
            win_layers=list(meta_extra.get("win_layers", [])),
            win_keys=t("win_keys"), win_values=t("win_values"),
            win_pos=None if "win_pos" not in parts else t("win_pos", torch.long).long(),
        )
