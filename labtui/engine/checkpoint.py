"""Checkpoint I/O of a hosted model: reading its weights back from the safetensors
files after a preemption with weights=disk (all or nothing), and the placeholders
its parameters point at while released.

Mixed into ``HostedModel``.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from labtui.engine.units import Slot, Unit
from labtui.errors import LabError


class Checkpoint:
    """Disk release and reload of a model's weights."""

    def _unbind_to_placeholder(self, u: Unit) -> None:
        # Point parameters at a one-element placeholder (zero strides) so the
        # released buffers are really freed; they are rebound on reload.
        for sl in u.slots:
            ph = torch.zeros((), dtype=sl.dtype).expand(sl.shape)
            if sl.is_param:
                sl.module._parameters[sl.attr].data = ph
            else:
                sl.module._buffers[sl.attr] = ph

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
        t0 = time.perf_counter()
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
        if self.pacing is not None:
            # The read came from the page cache; under a profile it takes the target's
            # storage time (fixed + bytes / GB/s, dilated): the difference is slept out.
            target = self.pacing.reload_s(sum(u.nbytes for u in units))
            left = target - (time.perf_counter() - t0)
            if left > 0:
                time.sleep(left)
