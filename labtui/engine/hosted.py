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
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate.hooks import ModelHook, add_hook_to_module, remove_hook_from_module
from accelerate.utils import named_module_tensors
from torch import nn

from labtui.engine.devices import Device
from labtui.engine.snapshot import CELL_HOST, CELL_MOVING, CELL_RESIDENT, CELL_STREAM, Ledger
from labtui.engine.transfer import D2H, H2D, Link, Pending
from labtui.errors import LabError

ALIGN = 64  # byte alignment of each tensor inside a unit's flat buffer

RESIDENT, STREAM, HOST = "resident", "stream", "host"


@dataclass
class Slot:
    module: nn.Module
    attr: str
    is_param: bool
    shape: torch.Size
    dtype: torch.dtype
    offset: int
    nbytes: int
    qualname: str
    persistent: bool


class Unit:
    """A placeable part of a model whose tensors live in one flat buffer."""

    def __init__(self, name: str, index: int | None, slots: list[Slot], nbytes: int):
        self.name = name
        self.index = index
        self.slots = slots
        self.nbytes = nbytes
        self.host_buf: torch.Tensor | None = None
        self.accel_buf: torch.Tensor | None = None
        self.kept: dict[int, torch.Tensor] = {}  # non-persistent tensors kept over a disk release

    def bind(self, buf: torch.Tensor) -> None:
        for s in self.slots:
            view = buf[s.offset : s.offset + s.nbytes].view(s.dtype).view(s.shape)
            if s.is_param:
                s.module._parameters[s.attr].data = view
            else:
                s.module._buffers[s.attr] = view

    def tensors(self) -> list[torch.Tensor]:
        return [
            s.module._parameters[s.attr] if s.is_param else s.module._buffers[s.attr] for s in self.slots
        ]


def _make_unit(name: str, index: int | None, module_tensors: list[tuple[nn.Module, str, str, bool, bool]]) -> Unit:
    slots, off = [], 0
    for mod, attr, qual, is_param, persistent in module_tensors:
        t = mod._parameters[attr] if is_param else mod._buffers[attr]
        nb = t.numel() * t.element_size()
        slots.append(Slot(mod, attr, is_param, t.shape, t.dtype, off, nb, qual, persistent))
        off += (nb + ALIGN - 1) // ALIGN * ALIGN
    return Unit(name, index, slots, off)


def find_decoder_blocks(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """The ModuleList of decoder blocks, from the model's ``_no_split_modules``."""
    names = set(getattr(model, "_no_split_modules", None) or [])
    best: tuple[str, nn.ModuleList] | None = None
    for qual, mod in model.named_modules():
        if isinstance(mod, nn.ModuleList) and len(mod) > 0:
            if all(type(m).__name__ in names for m in mod) and (best is None or len(mod) > len(best[1])):
                best = (qual, mod)
    if best is None:
        raise LabError(
            f"cannot find decoder blocks in {type(model).__name__} (no ModuleList of "
            f"{sorted(names) or 'declared no-split modules'}); labtui hosts transformers causal LMs "
            "that declare _no_split_modules"
        )
    return best


def _tensor_owner(model: nn.Module, qualname: str) -> tuple[nn.Module, str]:
    mod_name, _, attr = qualname.rpartition(".")
    return (model.get_submodule(mod_name) if mod_name else model), attr


def split_units(model: nn.Module) -> tuple[Unit, list[Unit]]:
    """(rest, blocks): every tensor in exactly one unit; tied weights counted once."""
    blocks_name, blocks = find_decoder_blocks(model)
    persistent_buffers = {n for n, _ in model.named_buffers() if n in model.state_dict()}
    seen: set[int] = set()
    block_units: list[Unit] = []

    def collect(prefix: str, module: nn.Module):
        out = []
        for name, t in named_module_tensors(module, include_buffers=True, recurse=True):
            if id(t) in seen:
                continue
            seen.add(id(t))
            qual = f"{prefix}.{name}" if prefix else name
            owner, attr = _tensor_owner(model, qual)
            is_param = attr in owner._parameters
            out.append((owner, attr, qual, is_param, is_param or qual in persistent_buffers))
        return out

    for i, blk in enumerate(blocks):
        block_units.append(_make_unit(f"block{i}", i, collect(f"{blocks_name}.{i}", blk)))
    rest = _make_unit("embed+head", None, collect("", model))
    return rest, block_units


class _BlockHook(ModelHook):
    """Runs a non-resident block: streams its weights in, or runs it on the host."""

    def __init__(self, hosted: HostedModel, index: int):
        super().__init__()
        self.hosted, self.index = hosted, index

    def pre_forward(self, module, *args, **kwargs):
        return self.hosted._pre_block(self.index, args, kwargs)

    def post_forward(self, module, output):
        return self.hosted._post_block(self.index, output)


Emit = Callable[..., None]


class HostedModel:
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
        self.link = link
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
        self.cache = None  # the running batch's DynamicCache (set by decode.Batch)
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
        self._kv_tok_key: tuple | None = None
        self._kv_tok = 0
        self.accel_kv_last = 0  # accelerator KV bytes after the last step (admission)
        self._kv_swapped = False  # preempted with kv=swap: accelerator KV is on the host
        self._paused_window = False  # preempted: no stream buffers held
        self.kv_bytes_per_token = [0] * self.n_layers  # measured by warmup()
        self.stream_bytes_moved = 0
        self.host_compute_s = 0.0
        self._pack_all_on_host()

    # ------------------------------------------------------------------ setup
    def _pack_all_on_host(self) -> None:
        for u in [self.rest, *self.blocks]:
            buf = self.device.host_empty(u.nbytes)
            for s, t in zip(u.slots, u.tensors(), strict=True):
                buf[s.offset : s.offset + s.nbytes].view(s.dtype).view(s.shape).copy_(t.detach())
            u.host_buf = buf
            u.bind(buf)  # the loaded tensors are now unreferenced and freed

    def initial_place(self, resident: set[int], mode: str) -> None:
        """Move the embedding/head and the resident blocks to the accelerator."""
        self.mode = mode
        need = self.rest.nbytes + sum(self.blocks[i].nbytes for i in resident)
        need += self._window_bytes([i for i in range(self.n_layers) if i not in resident], mode)
        self.device.check_fits(need, f"loading {self.id} at {len(resident)}/{self.n_layers} layers")
        self._move_weights(self.rest, to_accel=True, reason="load")
        for i in range(self.n_layers):
            if i in resident:
                self._move_weights(self.blocks[i], to_accel=True, reason="load", layer=i)
                self.placement[i] = RESIDENT
            else:
                self.placement[i] = mode
        self._refresh_hooks()
        self.sync_reservation()

    # --------------------------------------------------------------- placement
    def resident_set(self) -> set[int]:
        return {i for i, p in enumerate(self.placement) if p == RESIDENT}

    @property
    def residency(self) -> float:
        return len(self.resident_set()) / self.n_layers if self.n_layers else 1.0

    def layers_for_fraction(self, fraction: float) -> set[int]:
        """First k blocks resident, as llama.cpp's -ngl: k = round(fraction x layers)."""
        k = int(round(fraction * self.n_layers + 1e-9))
        return set(range(k))

    def validate_layers(self, layers: Iterable[int]) -> set[int]:
        bad = [i for i in layers if not 0 <= i < self.n_layers]
        if bad:
            raise LabError(
                f"{self.id} has no layer {bad[0]}; accepted: block indices 0..{self.n_layers - 1}"
            )
        return set(layers)

    def plan_cost(self, resident: set[int], mode: str) -> int:
        """Accelerator bytes the placement would add (negative: frees)."""
        cur = self.ledger()
        new_w = self.rest.nbytes + sum(self.blocks[i].nbytes for i in resident)
        offl = [i for i in range(self.n_layers) if i not in resident]
        new_buf = self._window_bytes(offl, mode)
        kv_accel = sum(self._kv_bytes(i) for i in range(self.n_layers) if not (i in offl and mode == HOST))
        return (new_w + new_buf + kv_accel) - cur.accel_total

    def set_placement(self, resident: set[int], mode: str, reason: str = "residency") -> None:
        """Move blocks so that exactly ``resident`` live on the accelerator and the rest
        are offloaded in ``mode``. Checks the budget first: nothing moves on refusal."""
        if self.weights_released:
            raise LabError(f"{self.id} is preempted; resume it before changing its residency")
        extra = self.plan_cost(resident, mode)
        if extra > 0:
            self.device.check_fits(extra, f"placing {self.id} at {len(resident)}/{self.n_layers} layers ({mode})")
        target = [RESIDENT if i in resident else mode for i in range(self.n_layers)]
        self.drain_prefetch()
        self._remove_hooks()
        # Offloads first (they free accelerator memory), then loads.
        order = [i for i in range(self.n_layers) if target[i] != RESIDENT] + [
            i for i in range(self.n_layers) if target[i] == RESIDENT
        ]
        for i in order:
            old, new = self.placement[i], target[i]
            if old == new:
                continue
            self.moving.add(i)
            self.publish()
            try:
                if old == RESIDENT:
                    self._move_weights(self.blocks[i], to_accel=False, reason=reason, layer=i)
                elif new == RESIDENT:
                    self._move_weights(self.blocks[i], to_accel=True, reason=reason, layer=i)
                if (old == HOST) != (new == HOST):  # KV follows where the block executes
                    self._move_kv(i, to_accel=(new != HOST), reason=reason)
                self.placement[i] = new
            finally:
                self.moving.discard(i)
            self.sync_reservation()
        self.mode = mode
        self._refresh_hooks()
        self.sync_reservation()
        self.publish()

    def _window_bytes(self, offloaded: list[int], mode: str) -> int:
        """Accelerator buffers for streamed weights: the block computing plus prefetches."""
        if mode != STREAM or not offloaded:
            return 0
        depth = min(len(offloaded), self.prefetch_depth if self.prefetch else 1)
        return depth * max(self.blocks[i].nbytes for i in offloaded)

    def _move_weights(self, unit: Unit, to_accel: bool, reason: str, layer: int | None = None) -> None:
        direction = H2D if to_accel else D2H
        src = unit.host_buf if to_accel else unit.accel_buf
        assert src is not None, f"{unit.name}: no source copy to move"
        moved = self.link.copy(src, direction)
        if to_accel:
            unit.accel_buf, unit.host_buf = moved.tensor, None
        else:
            unit.host_buf, unit.accel_buf = moved.tensor, None
        unit.bind(moved.tensor)
        self.emit(
            "layer_move",
            model=self.id,
            layer=layer if layer is not None else unit.name,
            what="weights",
            direction=direction,
            bytes=moved.nbytes,
            seconds=round(moved.seconds, 6),
            gbps=round(moved.gbps, 3),
            reason=reason,
        )

    # ---------------------------------------------------------------- KV cache
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

    # ------------------------------------------------------------------ ledger
    def ledger(self) -> Ledger:
        aw = (self.rest.nbytes if self.rest.accel_buf is not None else 0) + sum(
            b.nbytes for b in self.blocks if b.accel_buf is not None
        )
        hw = (self.rest.nbytes if self.rest.host_buf is not None else 0) + sum(
            b.nbytes for b in self.blocks if b.host_buf is not None
        )
        akv = hkv = 0
        kv_swapped = self._kv_swapped
        for i in range(self.n_layers):
            n = self._kv_bytes(i)
            if self.kv_on_host(i) or kv_swapped:
                hkv += n
            else:
                akv += n
        offl = [i for i, p in enumerate(self.placement) if p != RESIDENT]
        buf = 0 if self.weights_released or self._paused_window else self._window_bytes(offl, self.mode)
        return Ledger(accel_weights=aw, accel_kv=akv, accel_buffers=buf, host_weights=hw, host_kv=hkv)

    def sync_reservation(self, ledger: Ledger | None = None) -> None:
        """Keep the device's accounting equal to this model's ledger."""
        ledger = ledger or self.ledger()
        self.accel_kv_last = ledger.accel_kv
        total = ledger.accel_total
        delta = total - self._reserved
        if delta > 0:
            self.device.reserve(delta)
        elif delta < 0:
            self.device.release(-delta)
        self._reserved = total

    def release_reservation(self) -> None:
        if self._reserved:
            self.device.release(self._reserved)
            self._reserved = 0

    def layer_cells(self) -> str:
        code = {RESIDENT: CELL_RESIDENT, STREAM: CELL_STREAM, HOST: CELL_HOST}
        return "".join(CELL_MOVING if i in self.moving else code[p] for i, p in enumerate(self.placement))

    def weight_bytes(self) -> int:
        if self._weight_bytes is None:
            self._weight_bytes = self.rest.nbytes + sum(b.nbytes for b in self.blocks)
        return self._weight_bytes

    def streamed_bytes_per_forward(self) -> int:
        return sum(self.blocks[i].nbytes for i, p in enumerate(self.placement) if p == STREAM)

    # ------------------------------------------------------------------ hooks
    def _refresh_hooks(self) -> None:
        self._remove_hooks()
        for i, p in enumerate(self.placement):
            if p != RESIDENT:
                add_hook_to_module(self.blocks_modules[i], _BlockHook(self, i))
                self._hooks.add(i)

    def _remove_hooks(self) -> None:
        for i in self._hooks:
            remove_hook_from_module(self.blocks_modules[i])
        self._hooks.clear()

    @property
    def blocks_modules(self) -> nn.ModuleList:
        return find_decoder_blocks(self.model)[1]

    def _streamed_order(self) -> list[int]:
        return [i for i, p in enumerate(self.placement) if p == STREAM]

    def _issue_prefetch(self, after: int) -> None:
        """Keep up to ``prefetch_depth - 1`` streamed blocks in flight after ``after``,
        wrapping to the first streamed blocks of the next forward."""
        order = self._streamed_order()
        if not self.prefetch or not order:
            return
        pos = order.index(after) if after in order else -1
        want = min(self.prefetch_depth - 1, len(order) - 1)
        for k in range(1, len(order)):
            if len(self._inflight) >= want:
                break
            j = order[(pos + k) % len(order)]
            if j != after and j not in self._inflight:
                buf = self._take_buf(self.blocks[j].nbytes)
                self._buf_of[j] = buf
                self._inflight[j] = self.link.copy_async(self.blocks[j].host_buf, H2D, out=buf)

    def drain_prefetch(self) -> None:
        for j, p in self._inflight.items():
            p.wait()
            self._give_buf(j)
        self._inflight.clear()
        self._free_bufs.clear()  # placement may change: sizes and count with it

    def _take_buf(self, nbytes: int) -> torch.Tensor:
        size = max(self.blocks[i].nbytes for i in self._streamed_order())
        while self._free_bufs:
            b = self._free_bufs.pop()
            if b.numel() == size:
                return b[:nbytes]
        with torch.inference_mode(False):  # filled later by the link's thread
            return self.device.accel_empty(size)[:nbytes]

    def _give_buf(self, i: int) -> None:
        buf = self._buf_of.pop(i, None)
        if buf is not None:
            base = buf._base if buf._base is not None else buf
            self._free_bufs.append(base)

    def _pre_block(self, i: int, args, kwargs):
        if self.placement[i] == STREAM:
            pending = self._inflight.pop(i, None)
            if pending is not None:
                moved = pending.wait()
            else:
                buf = self._take_buf(self.blocks[i].nbytes)
                self._buf_of[i] = buf
                moved = self.link.copy(self.blocks[i].host_buf, H2D, out=buf)
            self.blocks[i].bind(moved.tensor)
            self.stream_bytes_moved += moved.nbytes
            self._issue_prefetch(i)
            return args, kwargs
        # HOST: activations cross to the host, unless the previous block ran there too.
        self._host_t0 = time.perf_counter()
        if self._act_on_host:
            args = (args[0],) + tuple(args[1:])
        else:
            args = tuple(self._to_host(a) for a in args)
        kwargs = {k: (v if k in ("cache", "past_key_values") else self._to_host(v, k)) for k, v in kwargs.items()}
        return args, kwargs

    def _post_block(self, i: int, output):
        if self.placement[i] == STREAM:
            self.blocks[i].bind(self.blocks[i].host_buf)  # drop the streamed copy
            self._give_buf(i)
            return output
        dt = time.perf_counter() - self._host_t0
        if self.device.simulated and self.device.host_slowdown > 1:
            # The host is slower than the accelerator by this factor; on sim both are
            # the same CPU, so the difference is waited out.
            time.sleep(dt * (self.device.host_slowdown - 1))
        self.host_compute_s += time.perf_counter() - self._host_t0
        nxt_host = i + 1 < self.n_layers and self.placement[i + 1] == HOST
        self._act_on_host = nxt_host
        if nxt_host:
            return output
        self._pe_cache = None
        return self._to_accel(output)

    def _to_host(self, v, key: str | None = None):
        if isinstance(v, torch.Tensor):
            return self.link.move_activation(v, D2H)
        if isinstance(v, tuple) and v and all(isinstance(x, torch.Tensor) for x in v):
            # position embeddings (cos, sin) are shared by every block of a forward:
            # cross once per forward, as a real runtime would keep them host-side.
            if key == "position_embeddings" and self._pe_cache is not None and self._pe_cache[0] == id(v):
                return self._pe_cache[1]
            moved = tuple(self.link.move_activation(x, D2H) for x in v)
            if key == "position_embeddings":
                self._pe_cache = (id(v), moved)
            return moved
        return v

    def _to_accel(self, out):
        if isinstance(out, torch.Tensor):
            return self.link.move_activation(out, H2D)
        if isinstance(out, tuple):
            return tuple(self._to_accel(x) if isinstance(x, torch.Tensor) else x for x in out)
        return out

    def begin_forward(self) -> None:
        self._act_on_host = False
        self._pe_cache = None

    # --------------------------------------------------------- preemption
    def release_weights(self, to: str, reason: str = "preempt") -> tuple[int, float]:
        """Free the accelerator's copy of every unit; ``to='host'`` keeps a host copy
        (moved over the link), ``to='disk'`` drops the weights entirely."""
        self.drain_prefetch()
        self._remove_hooks()
        moved_b, t0 = 0, time.perf_counter()
        units = [self.rest, *self.blocks]
        if to == "host":
            for u in units:
                if u.accel_buf is not None:
                    self._move_weights(u, to_accel=False, reason=reason, layer=u.index if u.index is not None else None)
                    moved_b += u.nbytes
        else:
            for u in units:
                moved_b += u.nbytes if u.accel_buf is not None else 0
                # Non-persistent buffers (rotary inv_freq) are not in the checkpoint:
                # keep standalone copies of those few KiB; everything else is freed.
                u.kept = {k: t.detach().to("cpu", copy=True) for k, (sl, t) in enumerate(zip(u.slots, u.tensors(), strict=True)) if not sl.persistent}
                u.accel_buf = None
                u.host_buf = None
                self._unbind_to_placeholder(u)
            self.weights_released = True
        self._paused_window = True
        self.device.synchronize()
        self.device.empty_cache()
        self.sync_reservation()
        return moved_b, time.perf_counter() - t0

    def _unbind_to_placeholder(self, u: Unit) -> None:
        # Point parameters at a one-element placeholder (zero strides) so the
        # released buffers are really freed; they are rebound on reload.
        for sl in u.slots:
            ph = torch.zeros((), dtype=sl.dtype).expand(sl.shape)
            if sl.is_param:
                sl.module._parameters[sl.attr].data = ph
            else:
                sl.module._buffers[sl.attr] = ph

    def reload_weights(self, from_: str, reason: str = "resume") -> tuple[int, float]:
        """Bring resident units back to the accelerator, from host RAM or the checkpoint."""
        t0 = time.perf_counter()
        if from_ == "disk" and self.weights_released:
            self._read_checkpoint()
            self.weights_released = False
        moved_b = 0
        for u in [self.rest, *self.blocks]:
            on_accel = u.index is None or self.placement[u.index] == RESIDENT
            if on_accel and u.accel_buf is None:
                self._move_weights(u, to_accel=True, reason=reason, layer=u.index)
                moved_b += u.nbytes
        self._paused_window = False
        self._refresh_hooks()
        self.sync_reservation()
        return moved_b, time.perf_counter() - t0

    def disk_reload_supported(self) -> str | None:
        """None if every persistent tensor can be read back from the checkpoint."""
        names = self._checkpoint_names()
        missing = [s.qualname for u in [self.rest, *self.blocks] for s in u.slots if s.persistent and s.qualname not in names]
        if missing:
            return f"tensor {missing[0]} is not stored under that name in the checkpoint"
        return None

    def _checkpoint_files(self) -> list[Path]:
        files = sorted(self.path.glob("*.safetensors"))
        return files

    def _checkpoint_names(self) -> dict[str, Path]:
        if getattr(self, "_ckpt_names", None) is None:
            from safetensors import safe_open

            names: dict[str, Path] = {}
            for f in self._checkpoint_files():
                with safe_open(str(f), framework="pt") as sf:
                    for k in sf.keys():
                        names[k] = f
            self._ckpt_names = names
        return self._ckpt_names

    def _read_checkpoint(self) -> None:
        from safetensors import safe_open

        names = self._checkpoint_names()
        # All or nothing: read into new buffers and commit only once every tensor is
        # read, so a checkpoint damaged since load leaves the model preempted and
        # intact (a later resume, after repair, still works).
        units = [self.rest, *self.blocks]
        bufs = {id(u): self.device.host_empty(u.nbytes) for u in units}
        by_file: dict[Path, list[tuple[Unit, Slot]]] = {}
        for u in units:
            for k, s in enumerate(u.slots):
                if s.persistent:
                    by_file.setdefault(names[s.qualname], []).append((u, s))
                else:
                    bufs[id(u)][s.offset : s.offset + s.nbytes].view(s.dtype).view(s.shape).copy_(u.kept[k])
        for f, items in by_file.items():
            try:
                with safe_open(str(f), framework="pt") as sf:
                    for u, s in items:
                        t = sf.get_tensor(s.qualname)
                        bufs[id(u)][s.offset : s.offset + s.nbytes].view(s.dtype).view(s.shape).copy_(t.to(s.dtype))
            except Exception as e:  # safetensors raises its own error types
                raise LabError(
                    f"cannot reload {self.id}'s weights: checkpoint file {f} is truncated or corrupt "
                    f"({' '.join(str(e).split())[:200]}); it stays preempted: repair the file and resume, or unload it"
                ) from None
        for u in units:
            u.host_buf, u.kept = bufs[id(u)], {}
            u.bind(u.host_buf)

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

    # ------------------------------------------------------------------- misc
    def unload(self) -> None:
        self.drain_prefetch()
        self._remove_hooks()
        for u in [self.rest, *self.blocks]:
            u.accel_buf = None
            u.host_buf = None
        self.cache = None
        self.release_reservation()
        self.device.empty_cache()

    def check_invariants(self) -> None:
        """Every unit in exactly one place, every tensor of the model inside its unit's
        live buffer, and the ledger equal to the bytes actually found on each side."""
        if self.weights_released:
            return
        spans = []  # (start, end, side, unit)
        for u in [self.rest, *self.blocks]:
            assert (u.accel_buf is None) != (u.host_buf is None), f"{u.name}: copies on both sides or none"
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
