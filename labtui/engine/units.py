"""Units: the placeable parts of a model, each packed in one flat byte buffer.

Units are the embedding (plus every small tensor outside the decoder blocks: final
norm, head, rotary buffers), and each decoder block. Blocks are found generically
from transformers' own ``_no_split_modules`` metadata, never per-model code. Each
unit's tensors live in one flat buffer and the module's parameters are views into
it, so moving a block is one copy and the ledger is exact.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from accelerate.utils import named_module_tensors
from torch import nn

from labtui.errors import LabError

ALIGN = 64  # byte alignment of each tensor inside a unit's flat buffer


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
        # Bound tensors per buffer, by the buffer's address: a streamed block is bound
        # to a stream-ring slot and back to its host buffer twice per token. Slicing
        # every tensor anew each time was most of that cost, and setting each
        # Parameter's ``.data`` (a checked C++ setter) half of the rest (a llama-5m
        # block's bind pair: 4.8 -> 2.1 us of CPU); so a cached bind swaps in
        # ready-made Parameter objects (plain dict stores). They keep
        # their buffer alive, so ``forget_views`` must run when a ring slot goes back
        # to the device (streaming.drain_prefetch). ``aliased``: a tensor of the unit
        # is registered under two names; swapping objects would split the aliases, so
        # such a unit keeps setting ``.data`` on the shared object.
        self._views: dict[int, list[torch.Tensor]] = {}
        self.aliased = False

    def _make_views(self, buf: torch.Tensor) -> list[torch.Tensor]:
        return [buf[s.offset : s.offset + s.nbytes].view(s.dtype).view(s.shape) for s in self.slots]

    def _make_bound(self, buf: torch.Tensor) -> list[torch.Tensor]:
        with torch.inference_mode(False):  # plain Parameters, usable in and out of inference mode
            views = self._make_views(buf)
            if self.aliased:
                return views
            return [nn.Parameter(v, requires_grad=s.module._parameters[s.attr].requires_grad) if s.is_param else v
                    for s, v in zip(self.slots, views, strict=True)]

    def bind(self, buf: torch.Tensor, cached: bool = False) -> None:
        """Point every tensor of the unit into ``buf``; ``cached``: reuse the tensors
        bound to this buffer the last time (stream-ring slots and host buffers)."""
        if cached:
            bound = self._views.get(buf.data_ptr())
            if bound is None:
                bound = self._views[buf.data_ptr()] = self._make_bound(buf)
            if not self.aliased:
                for s, t in zip(self.slots, bound, strict=True):
                    (s.module._parameters if s.is_param else s.module._buffers)[s.attr] = t
                return
            views = bound
        else:
            # the Parameter now bound may be a cached one: its ``.data`` changes below,
            # so no cached entry may be trusted any more
            self._views.clear()
            views = self._make_views(buf)
        for s, view in zip(self.slots, views, strict=True):
            if s.is_param:
                s.module._parameters[s.attr].data = view
            else:
                s.module._buffers[s.attr] = view

    def forget_views(self) -> None:
        self._views.clear()

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
    # registrations per tensor over the whole model (tied weights: two or more)
    refs: dict[int, int] = {}
    for mod in model.modules():
        for t in [*mod._parameters.values(), *mod._buffers.values()]:
            if t is not None:
                refs[id(t)] = refs.get(id(t), 0) + 1
    for u in [rest, *block_units]:
        u.aliased = any(refs.get(id(t), 0) > 1 for t in u.tensors())
    return rest, block_units
