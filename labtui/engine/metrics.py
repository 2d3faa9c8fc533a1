"""Per-model serving metrics: served and decode tok/s (windowed and overall), TTFT/TPOT, bandwidth."""

from __future__ import annotations

import bisect
import math
from collections import deque

WINDOW_S = 3.0  # "tok/s now" is measured over this many seconds
# No rate is shown before it means something: served tok/s needs this much wall time
# since the model's first step (a 1-token, 1-ms first sample read ~1000 tok/s), and
# both rates need this many decode tokens in the window (for a slow model the window
# reaches back to its last MIN_TOKENS decode tokens, up to LONG_WINDOW_S).
MIN_SPAN_S = 1.0
MIN_TOKENS = 8
LONG_WINDOW_S = 30.0


def sorted_percentile(s: list[float], q: float) -> float | None:
    """numpy.percentile's default (linear) method on an already sorted list, to the
    last bit (the same index and the same two-sided lerp): O(1) instead of numpy's
    ~80 us of set-up per call, which the 10 Hz snapshot paid four times per model."""
    if not s:
        return None
    v = q / 100 * (len(s) - 1)
    lo = math.floor(v)
    hi = min(lo + 1, len(s) - 1)
    t = v - lo
    d = s[hi] - s[lo]
    return s[hi] - d * (1 - t) if t >= 0.5 else s[lo] + d * t


class _SortedWindow:
    """The last ``maxlen`` values in arrival order (a deque) and kept sorted beside
    it (insort/evict by bisection), so percentiles need no sort per snapshot."""

    def __init__(self, maxlen: int):
        self._q: deque[float] = deque()
        self._maxlen = maxlen
        self.sorted: list[float] = []

    def append(self, x: float) -> None:
        if len(self._q) >= self._maxlen:
            old = self._q.popleft()
            del self.sorted[bisect.bisect_left(self.sorted, old)]
        self._q.append(x)
        bisect.insort(self.sorted, x)

    def __len__(self) -> int:
        return len(self._q)

    def __iter__(self):
        return iter(self._q)


class ModelMetrics:
    """Counters of one model's steps, and its two rates (see snapshot.ModelSnapshot):
    served tok/s = decode tokens per wall second; decode tok/s = decode tokens per
    second of the model's own decode steps. Prefill's first token counts in
    ``tokens`` (what was generated), not in either rate's numerator."""

    def __init__(self):
        self.tokens = 0  # every generated token (prefill's first token included)
        self.decode_tokens = 0
        self.decode_s = 0.0  # wall time spent in this model's decode steps
        self.first_t: float | None = None  # start of the model's first step
        self.first_decode_t: float | None = None  # start of its first decode step
        self.last_t: float | None = None
        # decode steps of the last WINDOW_S, with running sums (O(1) per snapshot: the
        # engine publishes at 10 Hz and a fast model makes ~1000 steps a second)
        self._recent: deque[tuple[float, int, float, int]] = deque()  # (t, tokens, step_s, bytes)
        self._sum_tok = 0
        self._sum_s = 0.0
        self._sum_b = 0
        self._tail: deque[tuple[float, int, float]] = deque(maxlen=MIN_TOKENS)  # last decode steps
        self.ttft = _SortedWindow(5000)
        self.tpot = _SortedWindow(5000)
        self.history: deque[float] = deque(maxlen=240)  # served tok/s samples for sparklines
        self.completed = 0
        self.cancelled = 0
        self.failed = 0
        self.bytes_per_token = 0
        self._pct: tuple | None = None

    def on_step(self, now: float, tokens: int, step_s: float, bytes_read: int, decode: bool) -> None:
        self.tokens += tokens
        if self.first_t is None:
            self.first_t = now - step_s
        self.last_t = now
        if not decode:
            return
        if self.first_decode_t is None:
            self.first_decode_t = now - step_s
        self.decode_tokens += tokens
        self.decode_s += step_s
        self.bytes_per_token = bytes_read // max(1, tokens)
        self._recent.append((now, tokens, step_s, bytes_read))
        self._sum_tok += tokens
        self._sum_s += step_s
        self._sum_b += bytes_read
        self._tail.append((now, tokens, step_s))
        self._trim(now)

    def _trim(self, now: float) -> None:
        while self._recent and now - self._recent[0][0] > WINDOW_S:
            _, n, s, b = self._recent.popleft()
            self._sum_tok -= n
            self._sum_s -= s
            self._sum_b -= b
        if not self._recent:  # float sums drift: start again from zero
            self._sum_tok, self._sum_s, self._sum_b = 0, 0.0, 0

    def _window(self, now: float) -> tuple[int, float, float] | None:
        """(decode tokens, their decode seconds, wall span) of the rate window, or
        None when too little was measured for a rate to mean anything."""
        self._trim(now)
        if self.first_decode_t is None or now - self.first_t < MIN_SPAN_S:
            return None
        tok, s = self._sum_tok, self._sum_s
        span = min(WINDOW_S, now - self.first_t)
        if tok == 0 and sum(n for _, n, _ in self._tail) >= MIN_TOKENS:
            return 0, 0.0, span  # idle or paused for a window: served 0, no decode rate
        if tok < MIN_TOKENS:
            tail = [x for x in self._tail if now - x[0] <= LONG_WINDOW_S]
            if sum(n for _, n, _ in tail) < MIN_TOKENS:
                return None
            tok, s = sum(n for _, n, _ in tail), sum(d for _, _, d in tail)
            span = max(span, now - (tail[0][0] - tail[0][2]))
        return tok, s, span

    def served_tok_s(self, now: float) -> float | None:
        w = self._window(now)
        return w[0] / w[2] if w else None

    def decode_tok_s(self, now: float) -> float | None:
        w = self._window(now)
        return w[0] / w[1] if w and w[1] > 0 else None

    def gbps(self, now: float) -> float:
        """Achieved bandwidth, as gpt-fast reports it: bytes read per token x decode tok/s."""
        d = self.decode_tok_s(now)
        return self.bytes_per_token * d / 1e9 if d else 0.0

    def rates(self, now: float) -> tuple[float | None, float | None, float]:
        """(served tok/s, decode tok/s, achieved GB/s) from one pass over the window:
        what ``served_tok_s``, ``decode_tok_s`` and ``gbps`` return, for the snapshot."""
        w = self._window(now)
        if not w:
            return None, None, 0.0
        d = w[0] / w[1] if w[1] > 0 else None
        return w[0] / w[2], d, self.bytes_per_token * d / 1e9 if d else 0.0

    def overall_decode_tok_s(self) -> float | None:
        return self.decode_tokens / self.decode_s if self.decode_s > 0 else None

    def overall_served_tok_s(self) -> float | None:
        if self.first_t is None or self.last_t is None or self.last_t - self.first_t < MIN_SPAN_S:
            return None
        return self.decode_tokens / (self.last_t - self.first_t)

    def on_finish(self, ttft: float | None, tpot: float | None) -> None:
        self.completed += 1
        if ttft is not None:
            self.ttft.append(ttft)
        if tpot is not None:
            self.tpot.append(tpot)
        self._pct = None

    def percentiles(self) -> tuple[float | None, float | None, float | None, float | None]:
        """TTFT p50/p95, TPOT p50/p95; recomputed only when a request finished."""
        if self._pct is None:
            self._pct = (
                sorted_percentile(self.ttft.sorted, 50),
                sorted_percentile(self.ttft.sorted, 95),
                sorted_percentile(self.tpot.sorted, 50),
                sorted_percentile(self.tpot.sorted, 95),
            )
        return self._pct

    def summary(self) -> dict:
        return {
            "tokens": self.tokens,
            "decode_tokens": self.decode_tokens,
            "decode_s": round(self.decode_s, 6),
            # the same two words as the lab's card, over the model's whole life
            "decode_tok_s": _r3(self.overall_decode_tok_s()),
            "served_tok_s": _r3(self.overall_served_tok_s()),
            "completed": self.completed,
            "cancelled": self.cancelled,
            "failed": self.failed,
            "ttft_p50": sorted_percentile(self.ttft.sorted, 50),
            "ttft_p95": sorted_percentile(self.ttft.sorted, 95),
            "tpot_p50": sorted_percentile(self.tpot.sorted, 50),
            "tpot_p95": sorted_percentile(self.tpot.sorted, 95),
            "bytes_per_token": self.bytes_per_token,
        }


def _r3(x: float | None) -> float | None:
    return None if x is None else round(x, 3)
