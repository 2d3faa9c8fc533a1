"""The lab's custom messages, in one module (as Posting does)."""

from __future__ import annotations

from typing import Any

from textual.message import Message


class EngineReady(Message):
    """The engine was created on a worker thread (torch imported after first frame)."""

    def __init__(self, engine: Any) -> None:
        super().__init__()
        self.engine = engine


class EngineFailed(Message):
    """The engine could not start: code 2 for bad input (LabError), 1 otherwise."""

    def __init__(self, message: str, code: int = 2) -> None:
        super().__init__()
        self.message = message
        self.code = code


class CommandDone(Message):
    """A submitted command's future finished (posted from the engine thread)."""

    def __init__(self, cmd: Any, result: Any = None, error: BaseException | None = None) -> None:
        super().__init__()
        self.cmd = cmd
        self.result = result
        self.error = error


class ResidencyRequested(Message):
    """A residency slider was released (or settled after the debounce pause)."""

    def __init__(self, model: str, layers: int, n_layers: int) -> None:
        super().__init__()
        self.model = model
        self.layers = layers
        self.n_layers = n_layers


class ModelAction(Message):
    """A button on a model card was pressed: preempt, resume, workload, mode, prefetch, unload."""

    def __init__(self, model: str, action: str) -> None:
        super().__init__()
        self.model = model
        self.action = action


class ModelSelected(Message):
    def __init__(self, model: str) -> None:
        super().__init__()
        self.model = model
