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
MEASURED_STEPS = 21  # at least this many steps, and at least MEASURED_S of them:
MEASURED_S = 0.5  # a 5 ms step x 21 is a 0.1 s window, which one burst of other
MAX_STEPS = 400  # load on a shared core fills (D then 2x off for the whole run)


def measure_resident_step(hm: HostedModel) -> float:
    """Median seconds of one batch-1 greedy decode step with every unit resident
    (over at least MEASURED_STEPS steps and MEASURED_S seconds).

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
    k = 0
    while k < WARMUP_STEPS + MAX_STEPS:
        nxt = logits.argmax(-1, keepdim=True)
        t0 = time.perf_counter()
        logits = forward(hm, nxt, torch.ones(1, n + k + 1, dtype=torch.long), torch.tensor([[n + k]]), cache)
        if k >= WARMUP_STEPS:
            times.append(time.perf_counter() - t0)
            if len(times) >= MEASURED_STEPS and sum(times) >= MEASURED_S:
                break
        k += 1
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
