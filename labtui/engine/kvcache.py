"""The KV cache of a hosted model, block by block: where each block's KV lives (it
follows where the block executes), its bytes, and moving it across the link
(host-mode changes and preemption swaps).

Mixed into ``HostedModel``; the cache itself is transformers' (decode.Batch).
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
        layer = self.kv_layer(i)
        if layer is None:
            return 0, 0.0
        direction = H2D if to_accel else D2H
        total_b, total_s = 0, 0.0
        for attr in ("keys", "values"):
            moved = self.link.copy(getattr(layer, attr), direction)
            setattr(layer, attr, moved.tensor)
            total_b += moved.nbytes
            total_s += moved.seconds
        if hasattr(layer, "device"):
            layer.device = layer.keys.device
        self.emit(
            "layer_move",
            model=self.id,
            layer=i,
            what="kv",
            direction=direction,
            bytes=total_b,
            seconds=round(total_s, 6),
            gbps=round(total_b / total_s / 1e9, 3) if total_s > 0 else 0.0,
            reason=reason,
        )
        return total_b, total_s

    def swap_kv(self, to_host: bool, reason: str) -> tuple[int, float]:
        """Move the KV of every block that executes on the accelerator (preemption swap)."""
        total_b, total_s = 0, 0.0
        for i in range(self.n_layers):
            if not self.kv_on_host(i):
                b, s = self._move_kv(i, to_accel=not to_host, reason=reason)
                total_b += b
                total_s += s
        self._kv_swapped = to_host
        self.sync_reservation()
        return total_b, total_s
