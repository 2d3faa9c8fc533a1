"""Placement of a hosted model's units: which blocks are resident on the accelerator
and which are offloaded (``stream`` or ``host``), the bytes a placement needs
(computed here, once: ``placement_bytes``), weight moves across the link, and
parking the weights on the host or releasing them for a disk reload (preemption).

Mixed into ``HostedModel``; runs on the engine's worker thread.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

from labtui.engine.snapshot import (
    CELL_HOST,
    CELL_MOVING,
    CELL_PARKED,
    CELL_RELEASED,
    CELL_RESIDENT,
    CELL_STREAM,
)
from labtui.engine.transfer import D2H, H2D
from labtui.engine.units import Unit
from labtui.errors import LabError

RESIDENT, STREAM, HOST = "resident", "stream", "host"


class Placement:
    """Where each unit's weights live, and moving them."""

    def initial_place(self, resident: set[int], mode: str) -> None:
        """Move the embedding/head and the resident blocks to the accelerator."""
        self.mode = mode
        need = self.placement_bytes(resident, mode)
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

    def placement_bytes(self, resident: set[int], mode: str, kv: bool = False) -> int:
        """Accelerator bytes a placement needs: the embedding/head, the resident
        blocks and the stream window; with ``kv``, also the KV cache of every block
        that executes on the accelerator. The one place this sum is made (load,
        residency changes, resume and make-room all ask here)."""
        offl = [i for i in range(self.n_layers) if i not in resident]
        need = self.rest.nbytes + sum(self.blocks[i].nbytes for i in resident)
        need += self._window_bytes(offl, mode)
        if kv:
            need += sum(self._kv_bytes(i) for i in range(self.n_layers) if not (i in offl and mode == HOST))
        return need

    def plan_cost(self, resident: set[int], mode: str) -> int:
        """Accelerator bytes the placement would add (negative: frees), counting the
        admitted requests' reservation at the new placement (reservation.py)."""
        return self.claim_bytes(resident, mode) - self.ledger().accel_total - self._hold

    def set_placement(self, resident: set[int], mode: str, reason: str = "residency") -> None:
        """Move blocks so that exactly ``resident`` live on the accelerator and the rest
        are offloaded in ``mode``. Checks the budget first: nothing moves on refusal.

        Each block moves atomically (its weights and KV are copied into their new
        buffers first and switched over only once every copy arrived). If a move
        fails part-way, the blocks already moved stay recorded where they now are,
        the failing block stays where it was, and hooks, reservation and ``moving``
        are brought back in line before the error goes up: the model keeps serving
        from a consistent, possibly mixed placement, and the command can be retried."""
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
        try:
            for i in order:
                if self.placement[i] == target[i]:
                    continue
                self.moving.add(i)
                self.publish()
                try:
                    self._move_block(i, target[i], reason)
                finally:
                    self.moving.discard(i)
                self.sync_reservation()
        finally:
            offl = {p for p in self.placement if p != RESIDENT}
            if len(offl) == 1 or not offl:  # a mixed placement keeps the mode it had
                self.mode = offl.pop() if offl else mode
            self._refresh_hooks()
            self.sync_reservation()
            self.publish()

    def _move_block(self, i: int, new: str, reason: str) -> None:
        """Move block ``i`` to ``new`` as one step: weights, then its KV if the side
        it executes on changes; nothing is switched over unless every copy arrived."""
        old, unit = self.placement[i], self.blocks[i]
        staged = None
        if (old == RESIDENT) != (new == RESIDENT):
            staged = self._copy_weights(unit, to_accel=(new == RESIDENT), reason=reason, layer=i)
        try:
            if (old == HOST) != (new == HOST):  # KV follows where the block executes
                self._move_kv(i, to_accel=(new != HOST), reason=reason)
        except BaseException:
            if staged is not None and staged[0]:
                self.device.accel_free(staged[1])  # the copy that never switched over
            raise
        if staged is not None:
            self._commit_weights(unit, *staged)
        self.placement[i] = new

    def _window_bytes(self, offloaded: list[int], mode: str) -> int:
        """Accelerator buffers for streamed weights: the block computing plus prefetches."""
        if mode != STREAM or not offloaded:
            return 0
        depth = min(len(offloaded), self.prefetch_depth if self.prefetch else 1)
        return depth * max(self.blocks[i].nbytes for i in offloaded)

    def _move_weights(self, unit: Unit, to_accel: bool, reason: str, layer: int | None = None) -> None:
        self._commit_weights(unit, *self._copy_weights(unit, to_accel, reason, layer))

    def _copy_weights(self, unit: Unit, to_accel: bool, reason: str, layer: int | None = None):
        """Copy a unit's weights to the other side without switching over to them.

        The destination exists before the timed copy: to the accelerator, a buffer
        from the device (pre-faulted on sim); to the host, the unit's own host
        buffer, kept for life. Returns what ``_commit_weights`` needs."""
        direction = H2D if to_accel else D2H
        src = unit.host_buf if to_accel else unit.accel_buf
        assert src is not None, f"{unit.name}: no source copy to move"
        if to_accel:
            dst = self.device.accel_empty(unit.nbytes)
        else:
            # A resident unit's host buffer is not live: the copy may overwrite it
            # (a failed copy leaves the live accelerator copy untouched).
            dst = unit.host_buf
        try:
            moved = self.link.copy(src, direction, out=dst)
        except BaseException:
            if to_accel:
                self.device.accel_free(dst)
            raise
        return to_accel, dst, moved, (unit.name if layer is None else layer), reason

    def _commit_weights(self, unit: Unit, to_accel: bool, dst, moved, layer, reason: str) -> None:
        """Switch a unit over to the copy ``_copy_weights`` made (cannot fail)."""
        if to_accel:
            unit.accel_buf = dst
        else:
            self.device.accel_free(unit.accel_buf)
            unit.accel_buf = None
        unit.bind(dst)
        self._emit_move(layer, "weights", to_accel, moved.nbytes, moved.seconds, moved.wait_s, reason)

    def _emit_move(self, layer: int, what: str, to_accel: bool, nbytes: int, seconds: float,
                   wait_s: float, reason: str) -> None:
        """The one shape of a ``layer_move`` event (weights here, KV in kvcache.py)."""
        self.emit(
            "layer_move",
            model=self.id,
            layer=layer,
            what=what,
            direction=H2D if to_accel else D2H,
            bytes=nbytes,
            seconds=round(seconds, 6),
            gbps=round(nbytes / seconds / 1e9, 3) if seconds > 0 else 0.0,
            wait_s=round(wait_s, 6),
            reason=reason,
        )

    def layer_cells(self) -> str:
        """One cell per block, from where its bytes are now: the placement says where a
        block goes when the model serves, but a preempted model's blocks are parked in
        host RAM or released (nothing left: reloaded from the checkpoint)."""
        code = {RESIDENT: CELL_RESIDENT, STREAM: CELL_STREAM, HOST: CELL_HOST}
        paused = self._paused_window or self.weights_released
        out = []
        for i, p in enumerate(self.placement):
            b = self.blocks[i]
            if i in self.moving:
                out.append(CELL_MOVING)
            elif b.accel_buf is None and b.host_buf is None:
                out.append(CELL_RELEASED)
            elif paused and b.accel_buf is None:
                out.append(CELL_PARKED)
            else:
                out.append(code[p])
        return "".join(out)

    def weight_bytes(self) -> int:
        if self._weight_bytes is None:
            self._weight_bytes = self.rest.nbytes + sum(b.nbytes for b in self.blocks)
        return self._weight_bytes

    def release_weights(self, to: str, reason: str = "preempt") -> tuple[int, float]:
        """Free the accelerator's copy of every unit; ``to='host'`` copies the weights
        to their host buffers over the link, ``to='disk'`` drops them entirely.

        A release to host that fails part-way is rolled back (the units already moved
        are copied back: the accelerator memory they left is still free) and the
        model is left serving as before; see ``_undo_release``."""
        self.drain_prefetch()
        self._remove_hooks()
        moved_b, t0 = 0, time.perf_counter()
        units = [self.rest, *self.blocks]
        if to == "host":
            done: list[Unit] = []
            try:
                for u in units:
                    if u.accel_buf is not None:
                        self._move_weights(u, to_accel=False, reason=reason, layer=u.index if u.index is not None else None)
                        moved_b += u.nbytes
                        done.append(u)
            except BaseException:
                self._undo_release(done)
                raise
        else:
            for u in units:
                moved_b += u.nbytes if u.accel_buf is not None else 0
                # Non-persistent buffers (rotary inv_freq) are not in the checkpoint:
                # keep standalone copies of those few KiB; everything else is freed.
                u.kept = {k: t.detach().to("cpu", copy=True) for k, (sl, t) in enumerate(zip(u.slots, u.tensors(), strict=True)) if not sl.persistent}
                self.device.accel_free(u.accel_buf)
                u.accel_buf = None
                u.host_buf = None
                self._unbind_to_placeholder(u)
            self.weights_released = True
        self._paused_window = True
        self.device.synchronize()
        self.device.empty_cache()
        self.sync_reservation()
        return moved_b, time.perf_counter() - t0

    def _undo_release(self, done: list[Unit]) -> None:
        """Bring the units a failed release moved back to the accelerator; a block that
        cannot come back is recorded as streamed (weights on host, KV where it was:
        the one offloaded placement that needs no KV move). Hooks and reservation
        follow; only the embedding/head failing twice leaves the error standing."""
        for u in done:
            try:
                self._move_weights(u, to_accel=True, reason="rollback", layer=u.index)
            except Exception:
                if u.index is None:
                    self._move_weights(u, to_accel=True, reason="rollback")
                else:
                    self.placement[u.index] = STREAM
        self._refresh_hooks()
        self.sync_reservation()

    def reload_weights(self, from_: str, reason: str = "resume") -> tuple[int, float]:
        """Bring resident units back to the accelerator, from host RAM or the checkpoint.

        Units move one at a time, each atomically; if one fails, those already back
        are recorded on the accelerator (the ledger counts them), the model stays
        preempted, and a later resume moves the rest."""
        t0 = time.perf_counter()
        if from_ == "disk" and self.weights_released:
            self._read_checkpoint()
            self.weights_released = False
        moved_b = 0
        try:
            for u in [self.rest, *self.blocks]:
                on_accel = u.index is None or self.placement[u.index] == RESIDENT
                if on_accel and u.accel_buf is None:
                    self._move_weights(u, to_accel=True, reason=reason, layer=u.index)
                    moved_b += u.nbytes
        finally:
            self.sync_reservation()
        self._paused_window = False
        self._refresh_hooks()
        self.sync_reservation()
        return moved_b, time.perf_counter() - t0
