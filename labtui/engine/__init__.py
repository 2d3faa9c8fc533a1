"""The engine: hosted models, devices, transfers, scheduler, workloads, preemption.

All torch work happens on the engine's worker thread; frontends send commands
(``labtui.engine.commands``) and read snapshots and events.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from labtui.engine.api import Engine, GenerationResult

__all__ = ["Engine", "GenerationResult"]


def __getattr__(name: str):
    # Lazy: importing labtui.engine must not import torch (keeps `labtui --help` instant).
    if name in __all__:
        from labtui.engine import api

        return getattr(api, name)
    raise AttributeError(name)
