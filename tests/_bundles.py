"""One small real run shared by the runner and report tests (made once per session).

A residency sweep x a pause point on the smallest zoo model, with a note, a
`when tokens` trigger and a preempt/resume, so one bundle exercises the runner's
paths and every report figure that a preemption and a residency curve need."""

from __future__ import annotations

import functools
import tempfile
from pathlib import Path

TINY = '''
[lab]
name = "tiny"
description = "test scenario: residency x pause point on llama-5m"
timeout_s = 120

[device]
kind = "sim"
memory_gib = 1

[[models]]
id = "A"
source = "zoo:llama-5m"

[[workloads]]
model = "A"
id = "a-job"
requests = 1
prompt_tokens = 16
max_new_tokens = 60

[[timeline]]
action = "note"
text = "hello"

[[timeline]]
action = "preempt"
model = "A"
kv = "swap"
weights = "host"
when = { model = "A", tokens = 6 }

[[timeline]]
action = "resume"
model = "A"

[sweep]
residency = [0.5, 1.0]
pause_after_tokens = [0, 6]
warmup_tokens = 2
'''


def write_tiny(folder: Path, text: str = TINY) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    f = folder / "tiny.toml"
    f.write_text(text)
    return f


@functools.cache
def tiny_bundle() -> Path:
    from labtui.scenario.runner import run_file

    root = Path(tempfile.mkdtemp(prefix="labtui-test-bundle-"))
    res = run_file(write_tiny(root), out=root / "bundle", progress=False)
    assert not res.interrupted
    return res.path
