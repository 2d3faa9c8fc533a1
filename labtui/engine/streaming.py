"""Running non-resident blocks: accelerate ``ModelHook``s on the offloaded blocks only
(resident blocks run with zero overhead). A ``stream`` block's weights are copied
into a ring of reused accelerator buffers before its forward, with the next
streamed blocks prefetched while this one computes; a ``host`` block runs on the
host and only activations cross the link.

Mixed into ``HostedModel``; runs on the engine's worker thread.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import torch
from accelerate.hooks import ModelHook, add_hook_to_module, remove_hook_from_module
from torch import nn

from labtui.engine.placement import HOST, RESIDENT, STREAM
from labtui.engine.transfer import D2H, H2D
from labtui.engine.units import find_decoder_blocks

if TYPE_CHECKING:  # pragma: no cover
    from labtui.engine.hosted import HostedModel


class _BlockHook(ModelHook):
    """Runs a non-resident block: streams its weights in, or runs it on the host."""

    def __init__(self, hosted: HostedModel, index: int):
        super().__init__()
        self.hosted, self.index = hosted, index

    def pre_forward(self, module, *args, **kwargs):
        return self.hosted._pre_block(self.index, args, kwargs)

    def post_forward(self, module, output):
        return self.hosted._post_block(self.index, output)


def offload_hook(block: nn.Module) -> _BlockHook | None:
    """The engine's offload hook on ``block`` (a stream or host block), else None."""
    hook = getattr(block, "_hf_hook", None)
    return hook if type(hook) is _BlockHook else None


class Streaming:
    """Per-forward work for stream and host blocks: hooks, prefetch, activations."""

    def streamed_bytes_per_forward(self) -> int:
        return sum(self.blocks[i].nbytes for i, p in enumerate(self.placement) if p == STREAM)

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

    def _stream_plan(self) -> tuple[list[int], dict[int, int], int]:
        """(streamed blocks in order, each one's position in it, ring slot bytes):
        asked for every streamed block of every token, kept until the placement changes."""
        key = tuple(self.placement)
        cached = self.__dict__.get("_order_cache")
        if cached is None or cached[0] != key:
            order = [i for i, p in enumerate(self.placement) if p == STREAM]
            slot = max((self.blocks[i].nbytes for i in order), default=0)
            cached = self.__dict__["_order_cache"] = (key, order, {j: k for k, j in enumerate(order)}, slot)
        return cached[1], cached[2], cached[3]

    def _slot_bytes(self) -> int:
        """The size of a stream-ring slot: the largest streamed block."""
        return self._stream_plan()[2]

    def _issue_prefetch(self, after: int) -> None:
        """Keep up to min(streamed blocks, ``prefetch_depth``) - 1 streamed blocks in
        flight after ``after`` (the ring's other slots while ``after`` computes),
        wrapping to the first streamed blocks of the next forward.

        Not earlier: refilling a slot as soon as its block finished (the whole ring
        in flight between forwards) measured worse here (llama-5m, qwen3-10m at
        residency 0.5): on sim the copy lands in the same caches the compute reads,
        and a copy made a whole forward ahead is evicted again before its block runs."""
        if not self.prefetch:
            return
        order, pos_of, _ = self._stream_plan()
        n = len(order)
        want = min(n, self.prefetch_depth) - 1
        inflight = self._inflight
        if len(inflight) >= want:
            return
        pos = pos_of.get(after, -1)
        link, blocks = self.link, self.blocks
        for k in range(1, n):
            j = order[(pos + k) % n]
            if j in inflight or j == after:
                continue
            u = blocks[j]
            buf = self._take_buf(u.nbytes)
            self._buf_of[j] = buf
            inflight[j] = link.copy_async(u.host_buf, H2D, out=buf)
            if len(inflight) >= want:
                break

    def drain_prefetch(self) -> None:
        for j, p in self._inflight.items():
            p.wait()
            self._give_buf(j)
        self._inflight.clear()
        # placement may change, and the window's sizes and count with it: the buffers
        # go back to the device, which keeps them (pre-faulted) for the next user
        for b in self._free_bufs:
            self.device.accel_free(b)
        self._free_bufs.clear()
        for u in self.blocks:  # cached views would keep the ring's slots alive
            u.forget_views()

    def _take_buf(self, nbytes: int) -> torch.Tensor:
        size = self._slot_bytes()
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
            self.blocks[i].bind(moved.tensor, cached=True)
            self.stream_bytes_moved += moved.nbytes
            self._issue_prefetch(i)
            return args, kwargs
        # HOST: activations cross to the host, unless the previous block ran there too.
        if self._act_on_host:
            args = (args[0],) + tuple(args[1:])
        else:
            args = tuple(self._to_host(a) for a in args)
        kwargs = {k: (v if k in ("cache", "past_key_values") else self._to_host(v, k)) for k, v in kwargs.items()}
        # timed from here: the slowdown applies to the block's compute, not to the
        # activations' link time (paced on its own)
        self._host_t0 = time.perf_counter()
        return args, kwargs

    def _post_block(self, i: int, output):
        if self.placement[i] == STREAM:
            self.blocks[i].bind(self.blocks[i].host_buf, cached=True)  # drop the streamed copy
            self._give_buf(i)
            return output
        dt = time.perf_counter() - self._host_t0
        if self.device.simulated and self.pacing is not None:
            # Under a hardware profile the block takes the target's host time, dilated
            # (bytes / host GB/s + fixed cost, dilation.py), as copies take the link's:
            # scaling the CPU's own block time instead would miss the per-forward
            # framework cost outside the blocks that a CPU's resident step carries.
            p = self.pacing
            left = self.blocks[i].nbytes / (p.host_gbps * 1e9) + p.host_block_s - dt
            if left > 0:
                time.sleep(left)
        elif self.device.simulated and self.device.host_slowdown > 1:
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
