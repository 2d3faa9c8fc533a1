"""Per-model serving metrics: rolling and overall decode tok/s, TTFT/TPOT, bandwidth."""

from __future__ import annotations

from collections import deque

import numpy as np

WINDOW_S = 3.0  # "tok/s now" is measured over this many seconds


def percentile(values, q: float) -> float | None:
    return float(np.percentile(np.asarray(values, dtype=float), q)) if len(values) else None


class ModelMetrics:
    def __init__(self):
        self.tokens = 0  # every generated token (prefill's first token included)
        self.decode_tokens = 0
        self.decode_s = 0.0  # wall time spent in this model's decode steps
        self.first_t: float | None = None
        self.last_t: float | None = None
        self._recent: deque[tuple[float, int, int]] = deque()  # (t, tokens, bytes read)
        self.ttft: deque[float] = deque(maxlen=5000)
        self.tpot: deque[float] = deque(maxlen=5000)
        self.history: deque[float] = deque(maxlen=240)  # tok/s samples for sparklines
        self.completed = 0
        self.cancelled = 0
        self.failed = 0
        self.bytes_per_token = 0
        self._pct: tuple | None = None

    def on_step(self, now: float, tokens: int, step_s: float, bytes_read: int, decode: bool) -> None:
        self.tokens += tokens
        if decode:
            self.decode_tokens += tokens
            self.decode_s += step_s
            self.bytes_per_token = bytes_read // max(1, tokens)
        if self.first_t is None:
            self.first_t = now
        self.last_t = now
        self._recent.append((now, tokens, bytes_read if decode else 0))
        self._trim(now)

    def _trim(self, now: float) -> None:
        while self._recent and now - self._recent[0][0] > WINDOW_S:
            self._recent.popleft()

    def tok_s(self, now: float) -> float:
        self._trim(now)
        if not self._recent:
            return 0.0
        span = max(now - self._recent[0][0], min(WINDOW_S, now - (self.first_t or now)), 1e-3)
        return sum(n for _, n, _ in self._recent) / span

    def gbps(self, now: float) -> float:
        self._trim(now)
        if not self._recent:
            return 0.0
        span = max(now - self._recent[0][0], min(WINDOW_S, now - (self.first_t or now)), 1e-3)
        return sum(b for _, _, b in self._recent) / span / 1e9

    def decode_tok_s(self) -> float:
        return self.decode_tokens / self.decode_s if self.decode_s > 0 else 0.0

    def overall_tok_s(self) -> float:
        if self.first_t is None or self.last_t is None or self.last_t <= self.first_t:
            return 0.0
        return self.tokens / (self.last_t - self.first_t)

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
                percentile(self.ttft, 50),
                percentile(self.ttft, 95),
                percentile(self.tpot, 50),
                percentile(self.tpot, 95),
            )
        return self._pct

    def summary(self) -> dict:
        return {
            "tokens": self.tokens,
            "decode_tokens": self.decode_tokens,
            "decode_s": round(self.decode_s, 6),
            "decode_tok_s": round(self.decode_tok_s(), 3),
            "tok_s_overall": round(self.overall_tok_s(), 3),
            "completed": self.completed,
            "cancelled": self.cancelled,
            "failed": self.failed,
            "ttft_p50": percentile(self.ttft, 50),
            "ttft_p95": percentile(self.ttft, 95),
            "tpot_p50": percentile(self.tpot, 50),
            "tpot_p95": percentile(self.tpot, 95),
            "bytes_per_token": self.bytes_per_token,
        }
