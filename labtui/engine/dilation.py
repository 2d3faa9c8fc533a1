"""Time dilation: a hardware profile's ratios on this machine's clock.

On ``sim`` under a profile, each model's resident decode step is measured here
once, at load, and ``Profile.pacing_for`` turns it into that model's ``Pacing``
(this machine's step is D times the target's, so its link, storage and fixed
costs are slowed by D; host blocks take the target's slowdown). The model's
copies then go through a ``LinkView`` carrying that pacing (transfer.py), disk
reloads sleep out the profile's storage time (checkpoint.py) and host blocks use
its slowdown (streaming.py). Without a profile nothing here runs.
"""

from __future__ import annotations

import statistics
import time
from typing import TYPE_CHECKING

import torch
from transformers import DynamicCache

if TYPE_CHECKING:  # pragma: no cover
    from labtui.engine.hosted import HostedModel
    from labtui.engine.profiles import Pacing, Profile

PROMPT_TOKENS = 8
WARMUP_STEPS = 3
MEASURED_STEPS = 9  # median of 9: robust to a noisy core


def measure_resident_step(hm: HostedModel) -> float:
    """Median seconds of one batch-1 greedy decode step with every unit resident.

    Run before the model is placed: its units are then bound to their host buffers
    and no block has a hook, so on sim (accelerator memory is this machine's RAM)
    this is exactly the compute of a fully resident model, whatever residency it
    is later placed at. The same forward decode.py runs, with a DynamicCache.
    """
    from labtui.engine.decode import forward  # decode imports hosted: not at module level

    vocab = int(getattr(hm.config, "vocab_size", 32) or 32)
    n = PROMPT_TOKENS
    ids = (torch.arange(n) % max(1, vocab - 1) + 1).unsqueeze(0)
    cache = DynamicCache()
    logits = forward(hm, ids, torch.ones(1, n, dtype=torch.long), torch.arange(n).unsqueeze(0), cache)
    times: list[float] = []
    for k in range(WARMUP_STEPS + MEASURED_STEPS):
        nxt = logits.argmax(-1, keepdim=True)
        t0 = time.perf_counter()
        logits = forward(hm, nxt, torch.ones(1, n + k + 1, dtype=torch.long), torch.tensor([[n + k]]), cache)
        if k >= WARMUP_STEPS:
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def apply_profile(hm: HostedModel, profile: Profile, resident_step_s: float | None = None) -> Pacing:
    """Measure (unless given) and set ``hm.pacing``; its copies are paced by it from now."""
    step = measure_resident_step(hm) if resident_step_s is None else resident_step_s
    pacing = profile.pacing_for(step, hm.weight_bytes(), block_bytes=hm.blocks[0].nbytes if hm.blocks else None,
                                n_layers=hm.n_layers)
    hm.pacing = pacing
    hm.resident_step_measured_s = step
    hm.link = hm.link.view(pacing)
    return pacing
