"""A hosted model: a Hugging Face causal LM split into units that really move.

Units are the embedding (plus every small tensor outside the decoder blocks: final
norm, head, rotary buffers), and each decoder block. Blocks are found generically
from transformers' own ``_no_split_modules`` metadata, never per-model code.

Each unit's tensors are packed into one flat byte buffer (pinned on cuda) and the
module's parameters are views into it, so moving a block is one copy and the
ledger is exact. A block is placed ``resident`` (weights on the accelerator),
``stream`` (weights on the host, copied in for each forward, with the next
streamed blocks prefetched while this one computes) or ``host`` (the block runs on
the host; activations cross the link, its KV cache stays on the host).

The per-forward work is done by accelerate ``ModelHook``s attached to the
non-resident blocks only, so resident blocks run with zero overhead.

The hosted model is split by concern, each a module beside this one: units.py
(finding and packing units), placement.py (resident/stream/host, moves, bytes a
placement needs), streaming.py (hooks, prefetch, host execution), kvcache.py (KV
per block), checkpoint.py (disk reload). This module holds the model, its ledger
and its invariants.

"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from accelerate.utils import named_module_tensors
from torch import nn

from labtui.engine.checkpoint import Checkpoint
from labtui.engine.devices import Device
from labtui.engine.kvcache import KVPlacement
from labtui.engine.placement import HOST, RESIDENT, STREAM, Placement
from labtui.engine.reservation import Reservation, config_kv_bytes_per_token, dtype_size
from labtui.engine.snapshot import Ledger
from labtui.engine.streaming import Streaming, _BlockHook
from labtui.engine.transfer import Link, Pending
from labtui.engine.units import ALIGN, Slot, Unit, find_decoder_blocks, split_units

Emit = Callable[..., None]


class HostedModel(Placement, Streaming, KVPlacement, Checkpoint, Reservation):
    def __init__(
        self,
        model_id: str,
        source: str,
        path: Path,
        model: nn.Module,
        tokenizer,
        device: Device,
        link: Link,
        emit: Emit,
        publish: Callable[[], None] | None = None,
        prefetch: bool = True,
        prefetch_depth: int = 4,
    ):
        self.id = model_id
        self.source = source
        self.path = Path(path)
        self.model = model
        self.tokenizer = tokenizer
        self.device = device
        self.link = link  # a LinkView carrying self.pacing once a profile's is set (dilation.py)
        self.pacing = None  # profiles.Pacing on sim under a hardware profile, else None
        self.emit = emit
        self.publish = publish or (lambda: None)
        self.prefetch = prefetch
        self.prefetch_depth = max(1, int(prefetch_depth))
        self.config = model.config
        self.family = getattr(model.config, "model_type", "?")
        self.params = sum(p.numel() for p in model.parameters())
        self.rest, self.blocks = split_units(model)
        self.n_layers = len(self.blocks)
        self.placement: list[str] = [HOST] * self.n_layers  # set by place()
        self.mode = STREAM
        self.moving: set[int] = set()
        self.weights_released = False  # preempted with weights=disk
        self.cache = None  # the running batch's GrowableCache (kvbuffer.py, set by decode.Batch)
        self._hooks: set[int] = set()
        self._inflight: dict[int, Pending] = {}
        # Streamed weights land in a small ring of reused accelerator buffers (the
        # "stream window" the ledger reserves), not in fresh allocations per forward.
        self._free_bufs: list[torch.Tensor] = []
        self._buf_of: dict[int, torch.Tensor] = {}
        self._act_on_host = False
        self._host_t0 = 0.0
        self._pe_cache: tuple[int, object] | None = None
        self._reserved = 0
        self._weight_bytes: int | None = None
        self.cache_kwarg: str | None = None  # name of forward()'s KV-cache argument
        self.direct = None  # decode.DirectDecoder: the modules of a direct one-token step
        self._kv_tok_key: tuple | None = None
        self._kv_tok = 0
        self.accel_kv_last = 0  # accelerator KV bytes after the last step (admission)
        self.last_ledger: Ledger | None = None  # the ledger of the last sync_reservation
        self._kv_swapped = False  # preempted with kv=swap: accelerator KV is on the host
        self._paused_window = False  # preempted: no stream buffers held
        # KV bytes per token and block: from the config until the first prefill measures
        # them (admission reserves before the first KV exists).
        self.elsize = dtype_size(model)
        self.kv_bytes_per_token = config_kv_bytes_per_token(self.config, self.n_layers, self.elsize)
        self.kv_measured = False
        self.plan = (0, 0, 0, 0)  # admitted rows, longest row, prefill tokens, merge bytes
        self._hold = 0  # headroom held on the device for the plan (reservation.py)
        self.stream_bytes_moved = 0
        self.host_compute_s = 0.0
        self._pack_all_on_host()

    def _pack_all_on_host(self) -> None:
        for u in [self.rest, *self.blocks]:
            buf = self.device.host_empty(u.nbytes)
            for s, t in zip(u.slots, u.tensors(), strict=True):
                buf[s.offset : s.offset + s.nbytes].view(s.dtype).view(s.shape).copy_(t.detach())
            u.host_buf = buf
            u.bind(buf)  # the loaded tensors are now unreferenced and freed

    def ledger(self) -> Ledger:
        # Runs after every step and in every policy view: one plain pass over the units
        # and the cache's layers (kvcache.kv_layer/_kv_bytes per block cost 6x more).
        aw = hw = staging = 0
        for u in [self.rest, *self.blocks]:
            if u.accel_buf is not None:
                aw += u.nbytes
                staging += u.nbytes if u.host_buf is not None else 0
            elif u.host_buf is not None:
                hw += u.nbytes
        akv = hkv = 0
        if self.cache is not None:
            kv_swapped, placement = self._kv_swapped, self.placement
            for i, layer in enumerate(self.cache.layers[: self.n_layers]):
                k, v = getattr(layer, "keys", None), getattr(layer, "values", None)
                if not isinstance(k, torch.Tensor) or k.numel() == 0:
                    continue
                n = k.numel() * k.element_size() + v.numel() * v.element_size()
                if kv_swapped or placement[i] == HOST:
                    hkv += n
                else:
                    akv += n
        # the stream window serves the streamed blocks (after a move that failed
        # part-way, offloaded blocks can be a mix of stream and host)
        streamed = [i for i, p in enumerate(self.placement) if p == STREAM]
        buf = 0 if self.weights_released or self._paused_window else self._window_bytes(streamed, STREAM)
        return Ledger(accel_weights=aw, accel_kv=akv, accel_buffers=buf, host_weights=hw, host_kv=hkv,
                      host_staging=staging)

    def sync_reservation(self, ledger: Ledger | None = None) -> None:
        """Keep the device's accounting equal to this model's ledger, and its
        reservation equal to what the admitted rows still need (reservation.py)."""
        ledger = ledger or self.ledger()
        self.last_ledger = ledger  # what the device accounts now (worker._step reuses it)
        self.accel_kv_last = ledger.accel_kv
        total = ledger.accel_total
        delta = total - self._reserved
        if delta > 0:
            self.device.reserve(delta)
        elif delta < 0:
            self.device.release(-delta)
        self._reserved = total
        hold = self.hold_for(ledger)
        if hold != self._hold:
            self.device.set_hold(self, hold)
            self._hold = hold

    def release_reservation(self) -> None:
        if self._reserved:
            self.device.release(self._reserved)
            self._reserved = 0
        self.plan = (0, 0, 0, 0)
        if self._hold:
            self.device.set_hold(self, 0)
            self._hold = 0

    def unload(self) -> None:
        self.drain_prefetch()
        self._remove_hooks()
        for u in [self.rest, *self.blocks]:
            self.device.accel_free(u.accel_buf)
            u.accel_buf = None
            u.host_buf = None
        self.cache = None
        self.release_reservation()
        self.device.empty_cache()

    def check_invariants(self) -> None:
        """Every unit in exactly one place, every tensor of the model inside its unit's
        live buffer, and the ledger equal to the bytes actually found on each side."""
        assert not self.moving, f"blocks {sorted(self.moving)} still marked moving"
        if self.weights_released:
            return
        if not self._paused_window:  # serving: hooks on exactly the offloaded blocks
            offl = {i for i, p in enumerate(self.placement) if p != RESIDENT}
            assert self._hooks == offl, f"hooks on {sorted(self._hooks)}, offloaded blocks {sorted(offl)}"
        spans = []  # (start, end, side, unit)
        staging = 0
        for u in [self.rest, *self.blocks]:
            # every unit keeps its host buffer for life; the accelerator copy is extra
            assert u.host_buf is not None and u.host_buf.numel() == u.nbytes, f"{u.name}: no host buffer"
            if u.accel_buf is not None:
                assert u.accel_buf.data_ptr() != u.host_buf.data_ptr(), f"{u.name}: one buffer on both sides"
                staging += u.nbytes
            expect_accel = u.index is None or self.placement[u.index] == RESIDENT
            on_accel = u.accel_buf is not None
            assert on_accel == expect_accel or self._paused_window, f"{u.name} is in the wrong place"
            live = u.accel_buf if on_accel else u.host_buf
            spans.append((live.data_ptr(), live.data_ptr() + u.nbytes, "accel" if on_accel else "host", u))
        found = {"accel": 0, "host": 0}
        seen: set[int] = set()
        for name, t in named_module_tensors(self.model, include_buffers=True, recurse=True):
            if id(t) in seen:
                continue
            seen.add(id(t))
            p = t.data_ptr()
            hit = [sp for sp in spans if sp[0] <= p < sp[1]]
            assert len(hit) == 1, f"{name} lives outside every unit buffer (a stale or stray copy)"
            side = hit[0][2]
            if not self.device.simulated:
                assert (t.device.type == "cuda") == (side == "accel"), f"{name} on {t.device}, ledger says {side}"
            found[side] += t.numel() * t.element_size()
        pad = {"accel": 0, "host": 0}
        for _, _, side, u in spans:
            pad[side] += u.nbytes - sum(s.nbytes for s in u.slots)
        led = self.ledger()
        assert found["accel"] + pad["accel"] == led.accel_weights, f"ledger accel weights {led.accel_weights} != found {found['accel'] + pad['accel']}"
        assert found["host"] + pad["host"] == led.host_weights, f"ledger host weights {led.host_weights} != found {found['host'] + pad['host']}"
        assert staging == led.host_staging, f"ledger host staging {led.host_staging} != {staging}"
        kv = {"accel": 0, "host": 0}
        for i in range(self.n_layers):
            layer = self.kv_layer(i)
            if layer is None:
                continue
            side = "host" if (self.kv_on_host(i) or self._kv_swapped) else "accel"
            if not self.device.simulated:
                assert (layer.keys.device.type == "cuda") == (side == "accel"), f"KV of layer {i} on the wrong side"
            kv[side] += layer.keys.numel() * layer.keys.element_size() + layer.values.numel() * layer.values.element_size()
        assert (kv["accel"], kv["host"]) == (led.accel_kv, led.host_kv), "ledger KV differs from the cache tensors"


__all__ = ["ALIGN", "HOST", "RESIDENT", "STREAM", "HostedModel", "Slot", "Unit", "_BlockHook", "find_decoder_blocks", "split_units"]
