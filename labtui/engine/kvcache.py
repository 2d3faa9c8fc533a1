"""The KV cache of a hosted model, block by block: where each block's KV lives (it
follows where the block executes), its bytes, and moving it across the link
(host-mode changes and preemption swaps).

Mixed into ``HostedModel``; the cache itself is kvbuffer.GrowableCache, a transformers
``Cache`` whose buffers (capacity, not just the used window) are what moves and counts.
"""

from __future__ import annotations

import torch

from labtui.engine.placement import HOST
from labtui.engine.transfer import D2H, H2D


class KVPlacement:
    """Per-block KV bytes, side and moves."""

    def kv_layer(self, i: int):
        if self.cache is None or i >= len(self.cache.layers):
            return None
        layer = self.cache.layers[i]
        keys = getattr(layer, "keys", None)
        if keys is None or not isinstance(keys, torch.Tensor) or keys.numel() == 0:
            return None
        return layer

    def _kv_bytes(self, i: int) -> int:
        layer = self.kv_layer(i)
        if layer is None:
            return 0
        return layer.keys.numel() * layer.keys.element_size() + layer.values.numel() * layer.values.element_size()

    def kv_on_host(self, i: int) -> bool:
        return self.placement[i] == HOST

    def kv_per_token_accel(self) -> int:
        """KV bytes one token adds on the accelerator (blocks not run on the host)."""
        key = (tuple(self.placement), tuple(self.kv_bytes_per_token))
        if self._kv_tok_key != key:
            self._kv_tok_key = key
            self._kv_tok = sum(b for i, b in enumerate(self.kv_bytes_per_token) if not self.kv_on_host(i))
        return self._kv_tok

    def _move_kv(self, i: int, to_accel: bool, reason: str) -> tuple[int, float]:
        staged = self._copy_kv(i, to_accel)
        return self._commit_kv(i, to_accel, staged, reason)

    def _copy_kv(self, i: int, to_accel: bool):
        """Copy block ``i``'s keys and values to the other side, into destinations
        allocated (and touched) before the timed copies; switch nothing over yet, so
        a copy that fails leaves the cache as it was."""
        layer = self.kv_layer(i)
        if layer is None:
            return None
        direction = H2D if to_accel else D2H
        srcs = [getattr(layer, attr) for attr in ("keys", "values")]
        dsts = [self.link.empty_like(t, direction) for t in srcs]
        return layer, [self.link.copy(t, direction, out=d) for t, d in zip(srcs, dsts, strict=True)]

    def _commit_kv(self, i: int, to_accel: bool, staged, reason: str) -> tuple[int, float]:
        if staged is None:
            return 0, 0.0
        layer, moved = staged
        layer.keys, layer.values = moved[0].tensor, moved[1].tensor
        if hasattr(layer, "device"):
            layer.device = layer.keys.device
        total_b = sum(m.nbytes for m in moved)
        total_s = sum(m.seconds for m in moved)
        self._emit_move(i, "kv", to_accel, total_b, total_s, sum(m.wait_s for m in moved), reason)
        return total_b, total_s

    def swap_kv(self, to_host: bool, reason: str) -> tuple[int, float]:
        """Move the KV of every block that executes on the accelerator (preemption swap),
        all or nothing: every layer is copied first and switched over only once all
        arrived, so a swap that fails part-way leaves the cache where it was."""
        staged = {i: self._copy_kv(i, to_accel=not to_host) for i in range(self.n_layers) if not self.kv_on_host(i)}
        total_b, total_s = 0, 0.0
        for i, st in staged.items():
            b, s = self._commit_kv(i, not to_host, st, reason)
            total_b += b
            total_s += s
        self._kv_swapped = to_host
        self.sync_reservation()
        return total_b, total_s
