"""The running batch's KV cache: per block one preallocated buffer written in place.

transformers' ``DynamicCache`` grows by ``torch.cat`` in every layer on every
decode step (the whole KV copied each token) and a batch that admits a row must be
padded and concatenated again. ``GrowableCache`` keeps, per block, keys and values
as buffers ``[rows capacity, kv heads, tokens capacity, head dim]``; a step writes
its token at the end of the used window and attention gets *views* of the used
window ``[:rows, :, start:end]``. It is a transformers ``Cache`` of
``DynamicLayer`` subclasses so every model's attention calls ``update`` on it
unchanged (no per-model code), and the engine's KV moves (kvcache.py: residency,
swap, per-layer moves) keep working on ``layer.keys``/``layer.values``.

Capacity (``layer.keys`` *is* the whole buffer, so the ledger and the reservation
count the bytes really held, not the bytes used):

- tokens grow in chunks of ``CHUNK_TOKENS``, capped at the plan's longest
  projected row (prompt + max_new_tokens, reservation.py), never beyond it: a
  batch's window is never longer than its longest real row, which is at most that
  projection, so growth stays inside what admission reserved;
- rows: a row that finishes or is cancelled leaves a free slot (rows are
  compacted in place); the next admission writes into it without reallocating;
  spare slots and columns trimmed on the left are given back at the next growth,
  which reallocates to exactly the rows in use;
- a growth reallocates one block at a time (old and new alive for one block, the
  step workspace's ``layer_kv``), on the side where that block's KV lives.

Reserved-but-unused memory is bounded by: rows x (CHUNK_TOKENS - 1) tokens of
slack, plus spare slots and trimmed columns until the next growth (at most
CHUNK_TOKENS steps away, or the batch's end once the cap is reached).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from transformers.cache_utils import Cache, DynamicLayer

CHUNK_TOKENS = 64  # token capacity grows by this much at a time (amortised copies)


def capacity_for(tokens: int, cap: int) -> int:
    """Token capacity for a window of ``tokens``: the next chunk boundary, but never
    beyond ``cap`` (the plan's longest projected row; 0 = no plan) unless needed."""
    c = -(-tokens // CHUNK_TOKENS) * CHUNK_TOKENS
    if cap > 0:
        c = min(c, max(tokens, cap))
    return max(1, c)


class GrowableLayer(DynamicLayer):
    """One block's KV: ``keys``/``values`` are the whole buffers; rows ``[:n]`` and
    columns ``[start:end]`` are in use (left-padded rows hold zeros in their pad)."""

    def __init__(self, cap: Callable[[], int], owner: GrowableCache | None = None):
        super().__init__()
        self._cap = cap
        self._owner = owner
        self.n = 0
        self.start = 0
        self.end = 0

    # ----------------------------------------------------- transformers' side
    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        raise RuntimeError("a GrowableLayer is filled by add_row (a prefill), not by a first update")

    def update(self, key_states, value_states, *args, **kwargs):
        q = key_states.shape[-2]
        if self.end + q > self.keys.shape[-2]:
            self.resize(self.n, capacity_for(self.end - self.start + q, self._cap()))
        e = self.end
        self.keys[: self.n, :, e : e + q].copy_(key_states)
        self.values[: self.n, :, e : e + q].copy_(value_states)
        self.end = e + q
        return self.keys[: self.n, :, self.start : self.end], self.values[: self.n, :, self.start : self.end]

    def get_seq_length(self) -> int:
        return self.end - self.start if self.is_initialized else 0

    def crop(self, tokens_to_remove: int) -> None:
        raise NotImplementedError("the engine never crops a running batch's cache")

    # ------------------------------------------------------------ the batch's
    def resize(self, rows_cap: int, tokens_cap: int, right: int | None = None) -> None:
        """Reallocate to ``rows_cap`` x ``tokens_cap`` on the buffer's side, moving the
        used window so that it ends at column ``right`` (default: starts at 0)."""
        length = self.end - self.start
        right = length if right is None else right
        k, v = self.keys, self.values
        shape = (rows_cap, k.shape[1], tokens_cap, k.shape[3])
        nk = torch.empty(shape, dtype=k.dtype, device=k.device)
        nv = torch.empty(shape, dtype=v.dtype, device=v.device)
        if self.n:
            nk[: self.n, :, right - length : right].copy_(k[: self.n, :, self.start : self.end])
            nv[: self.n, :, right - length : right].copy_(v[: self.n, :, self.start : self.end])
        self.keys, self.values = nk, nv
        self.start, self.end = right - length, right
        if self._owner is not None:
            self._owner.epoch += 1

    def add_row(self, k: torch.Tensor, v: torch.Tensor, length: int) -> None:
        """Write a prefilled row (``k``/``v`` ``[1, H, length, D]``) into the next slot,
        right-aligned with the others (left padding of zeros)."""
        if not self.is_initialized:
            self.device = k.device
            cap = capacity_for(length, self._cap())
            shape = (1, k.shape[1], cap, k.shape[3])
            self.keys = torch.empty(shape, dtype=k.dtype, device=k.device)
            self.values = torch.empty(shape, dtype=v.dtype, device=v.device)
            self.is_initialized = True
            if self._owner is not None:
                self._owner.epoch += 1
            self.start = self.end = length  # an empty window, ending where the row will
        cur = self.end - self.start
        t = max(cur, length)
        rows_cap = self.keys.shape[0]
        if self.n + 1 > rows_cap or self.end - t < 0:
            # no free slot, or no room on the left for a longer row: one reallocation
            self.resize(self.n + 1, capacity_for(t, self._cap()), right=t)
        if t > cur:  # the old rows gain left padding in place
            self.keys[: self.n, :, self.end - t : self.start].zero_()
            self.values[: self.n, :, self.end - t : self.start].zero_()
            self.start = self.end - t
        r, e = self.n, self.end
        self.keys[r, :, self.start : e - length].zero_()
        self.values[r, :, self.start : e - length].zero_()
        self.keys[r, :, e - length : e].copy_(k[0])
        self.values[r, :, e - length : e].copy_(v[0])
        self.n += 1

    def keep_rows(self, idx: list[int]) -> None:
        """Keep rows ``idx`` (in order) as rows 0..len-1; the rest become free slots."""
        s, e = self.start, self.end
        if idx != list(range(len(idx))):
            sel = torch.tensor(idx, device=self.keys.device)
            self.keys[: len(idx), :, s:e] = self.keys[:, :, s:e].index_select(0, sel)
            self.values[: len(idx), :, s:e] = self.values[:, :, s:e].index_select(0, sel)
        self.n = len(idx)

    def trim_left(self, lead: int) -> None:
        """Columns that are padding for every row carry nothing: drop them from the window."""
        self.start += lead

    def used_bytes(self) -> int:
        if not self.is_initialized:
            return 0
        per = self.keys[0, :, 0].numel() * self.keys.element_size()
        return 2 * per * self.n * (self.end - self.start)


class GrowableCache(Cache):
    """The running batch's cache: one ``GrowableLayer`` per decoder block. ``cap``
    gives the plan's longest projected row (the growth limit; 0 = no plan)."""

    def __init__(self, n_layers: int, cap: Callable[[], int] = lambda: 0):
        self.epoch = 0  # bumped by every allocation: the bytes held change only then
        super().__init__(layers=[GrowableLayer(cap, self) for _ in range(n_layers)])

    # Row operations run in inference mode, as the forward that grows the buffers
    # does: an inference tensor may only be written in place inside it.
    @torch.inference_mode()
    def add_row(self, src: Cache, length: int) -> None:
        """Copy a batch-1 prefill's KV (``src``, transformers' cache) into a free slot."""
        for layer, new in zip(self.layers, src.layers, strict=True):
            if getattr(new, "keys", None) is None or new.keys.numel() == 0:
                continue  # a block without KV of its own (KV sharing)
            layer.add_row(new.keys, new.values, length)

    def _kv(self):
        return [ly for ly in self.layers if ly.is_initialized]

    @torch.inference_mode()
    def keep_rows(self, idx: list[int]) -> None:
        for ly in self._kv():
            ly.keep_rows(idx)

    def trim_left(self, lead: int) -> None:
        for ly in self._kv():
            ly.trim_left(lead)

    def used_bytes(self) -> int:
        return sum(ly.used_bytes() for ly in self._kv())
