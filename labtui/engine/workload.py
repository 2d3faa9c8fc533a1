"""Workloads: requests for one model, closed (N in flight) or poisson (rate).

Prompts are real tokenizer tokens: windows of the built-in corpus, tokenized by
the model's own tokenizer. Lengths are fixed or drawn (uniform, lognormal) from a
seeded generator, so the same scenario makes the same requests everywhere.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from pathlib import Path

from labtui.engine.commands import LaunchWorkload

_CORPUS_FALLBACK = (
    "A workstation shares one accelerator among several language models. Each model keeps "
    "some decoder layers in fast memory and the rest on the host, and the link between them "
    "decides how fast tokens arrive. "
)


def corpus_text() -> str:
    p = Path(__file__).resolve().parent.parent / "models" / "corpus.txt"
    try:
        return p.read_text(encoding="utf-8")
    except OSError:
        return _CORPUS_FALLBACK * 50


def corpus_ids(tokenizer) -> list[int]:
    ids = tokenizer(corpus_text(), add_special_tokens=False)["input_ids"] if tokenizer is not None else []
    return ids or list(range(1, 257))


def draw_length(rng: random.Random, center: int, kind: str) -> int:
    if kind == "fixed":
        return center
    if kind == "uniform":
        return max(1, rng.randint(max(1, center // 2), max(1, center * 3 // 2)))
    # lognormal with this mean and sigma 0.5
    sigma = 0.5
    mu = math.log(center) - sigma * sigma / 2
    return max(1, int(round(rng.lognormvariate(mu, sigma))))


def make_prompt(rng: random.Random, ids: list[int], length: int) -> list[int]:
    start = rng.randrange(len(ids))
    reps = (start + length) // len(ids) + 1
    return (ids * reps)[start : start + length]


class Workload:
    def __init__(self, wid: str, cmd: LaunchWorkload, corpus: list[int], seed: int, now: float):
        self.id = wid
        self.model = cmd.model
        self.cmd = cmd
        self.rng = random.Random(cmd.seed if cmd.seed is not None else seed)
        self.corpus = corpus
        self.submitted = 0
        self.completed = 0
        self.cancelled = 0
        self.inflight: set[str] = set()
        self.started = now
        self.next_arrival = now
        self.done = False
        self.snap_cache: tuple | None = None  # (counts, WorkloadSnapshot) of the last publish (snapshots.py)

    @property
    def total(self) -> int:
        return self.cmd.requests

    def tick(self, now: float, submit: Callable[[list[int], int, int], str]) -> None:
        """Submit what is due now; ``submit(prompt_ids, max_new_tokens, seed)`` -> request id."""
        c = self.cmd
        while not self.done and self.submitted < c.requests:
            if c.kind == "closed":
                if len(self.inflight) >= c.concurrency:
                    break
            elif now < self.next_arrival:
                break
            plen = draw_length(self.rng, c.prompt_tokens, c.prompt_dist)
            olen = draw_length(self.rng, c.max_new_tokens, c.output_dist)
            rid = submit(make_prompt(self.rng, self.corpus, plen), olen, self.rng.randrange(2**31))
            self.inflight.add(rid)
            self.submitted += 1
            if c.kind == "poisson":
                self.next_arrival += self.rng.expovariate(c.rate_per_s)
        self._check_done()

    def idle_until_finish(self) -> bool:
        """Done, or closed with its requests in flight: ``tick`` would submit nothing
        (and nothing changes that before one of them finishes)."""
        return self.done or (self.cmd.kind == "closed" and len(self.inflight) >= self.cmd.concurrency)

    def next_due(self) -> float | None:
        if self.done or self.submitted >= self.cmd.requests or self.cmd.kind == "closed":
            return None
        return self.next_arrival

    def on_finish(self, rid: str, cancelled: bool) -> None:
        if rid in self.inflight:
            self.inflight.discard(rid)
            if cancelled:
                self.cancelled += 1
            else:
                self.completed += 1
        self._check_done()

    def _check_done(self) -> None:
        if self.submitted >= self.cmd.requests and not self.inflight:
            self.done = True
