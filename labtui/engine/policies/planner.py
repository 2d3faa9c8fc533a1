"""The planner: places, preempts and admits models against their SLOs, then goodput.

What it keeps, per model (all learned online from the engine's own steps, seeded
by a cost model until measured):

- decode step time against placement (resident blocks, offload mode): a table of
  measured seconds per decode step (EWMA) per (k, mode); where a placement was never
  measured, the cost model (compute per block from the measurements, streamed bytes
  over the link, host blocks ``host_slowdown`` times slower) scaled by how far off
  the model has been for this model so far;
- its preemption cost with weights on the host and on disk (PhaseReports: reload
  seconds, EWMA; seeded by bytes over the link, plus a disk read);
- its workload: arrival rate (EWMA of requests per second) and pending output tokens.

Every ``PLAN_PERIOD_S`` it computes a target placement for every model:

1. the models with work (queued/running, or arrivals in the last ``ACTIVE_S``), and
   every pinned model, get their minimum (pinned: min_residency; others: 0 blocks
   streamed); if even the minimums do not fit, the busy model with the least SLO
   weight is preempted (KV swapped, weights parked on the host: the cheap reload),
   never a pinned one;
2. idle models that are not pinned are evicted when their memory is needed (weights
   to the host if host RAM allows, else disk: the measured reload costs say which is
   cheaper; the host is always cheaper when it has room);
3. the rest of the budget goes block by block to the model whose extra block lowers
   the weighted SLO violation most (predicted TPOT of a model = its step time plus
   the steps of the other busy models interleaved with it, times the observed
   contention), then raises goodput; offload mode per model: the faster of stream
   and host at its block count; compared with the most urgent model whole and the
   others filled into the rest;
4. taking turns (one model served whole, the busy models with only queued
   requests wait, weights parked on the host; a model with running requests too
   when its TPOT slack absorbs the pause) when sharing leaves a busy model
   offloaded and turns predict no more violation; a turn lasts while the served
   batch drains, the served model admitting nothing new while a model that has
   waited longer waits (pick) unless admitting delays its drain by at most
   ``HOLD_STEPS`` steps; a paused model stays paused while the turn lasts; no turn
   for a model with nothing running whose requests are younger than a waiting
   model's; an idle model left with no block is parked.

The cost of a placement: each busy model's predicted TPOT against 80% of its
target, the TTFT of a backlog behind a full batch, and its queueing load factor
(arrival rate x tokens x TPOT / max_batch) beyond 1; moves are lost service
(reloads delay first tokens in a turn's cost). A model serving within its TPOT
target keeps its placement as a floor.

Hysteresis: a model is moved only when the target differs by at least
``MIN_MOVE_BLOCKS`` blocks (or it is below its pinned minimum), and a busy model
not within its dwell of its last move, either way, unless the budget is exceeded
(20x the move's link time, ``MIN_DWELL_S`` = the measurements' time constant ..
``DWELL_S``). Resumes are sized to the memory free after the plan's shrinks. Preempted models with work are
resumed pipelined (decode starts when the embedding and first block are back; the
residency climbs block by block, starting in the offload mode the cost model finds
faster) when the reload costs more than ``PIPELINE_STEPS`` resident steps and the
oldest waiting request's TTFT target cannot absorb it, else sequentially. Step choice (admission order): a decode step
whose TPOT deadline (last step + slo_tpot_s) has passed first; else prefills first
(as vLLM), the one nearest its TTFT deadline (arrival + slo_ttft_s) first; else the
decode with the least slack; slack divided by the model's slo_weight.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from labtui.engine import commands as C
from labtui.engine.policies.base import Action, Candidate, LoadPlan, ModelView, Policy, View, evict
from labtui.engine.snapshot import PlanRow

ACTIVE_S = 1.5  # a model that had work this recently is planned for as active
MIN_MOVE_BLOCKS = 2
HOLD_STEPS = 2  # a held model still admits while that makes its batch drain at most this many steps later
PIPELINE_STEPS = 3.0  # resume pipelined when the reload takes more than this many resident steps
TURN_TTFT_SHARE = 0.5  # a turn ends once a waiting model has used this share of its TTFT target
DWELL_S = 4.0  # the longest a model waits after a move before it grows again
CONTENTION_TAU_S = 1.0  # time constant of the observed contention and TPOT (EWMA over time)
# the shortest dwell: a move is not reversed before the measurements that motivated
# it have been renewed (one time constant), so noise on a shared CPU cannot make a
# model's blocks flap between two models at every plan
MIN_DWELL_S = CONTENTION_TAU_S
DWELL_LINK_X = 20.0  # dwell = this many times the move's own link time (within the two)
EWMA = 0.3
DEFAULT_TTFT_S = 2.0  # objectives for models whose Load gives none
DEFAULT_TPOT_S = 0.25
KV_HEADROOM = 1.5  # plan room for the KV a busy model holds, times this (it grows)
DISK_GBPS_SEED = 2.0
# plan for TPOT within 80% of its target: the observed contention already multiplies
# every prediction (prefill steps interleaved, a shared CPU), so the margin is for
# noise only; a deeper one counts that contention twice and sends models to wait
# their turn (TTFT) for a TPOT they would have met sharing
SLO_MARGIN = 0.8


@dataclass
class _Learned:
    step_s: dict  # (k, mode) -> EWMA seconds per decode step
    extra_s: dict = None  # mode -> seconds one offloaded block adds per step (learned)
    compute_block_s: float | None = None  # seconds one block computes (resident)
    reload_s: dict = None  # weights ("host" | "disk") -> EWMA reload seconds
    rate: float = 0.0  # arrivals per second, EWMA
    last_arrived: int = 0
    last_t: float = 0.0
    last_tokens: int = 0
    last_s: float = 0.0
    last_active: float = -1e9
    last_move: float = -1e9
    last_refused: float = -1e9
    reports_seen: int = 0
    tp_t: float | None = None  # contention window start (running requests), its tokens, its prediction
    tp_tok: int = 0
    tp_pred: float | None = None
    obs_tpot: float | None = None  # observed wall seconds per token of its running requests (EWMA, ~1 s)


class Planner(Policy):
    name = "planner"
    evicts = True
    places = True

    def __init__(self):
        self.learned: dict[str, _Learned] = {}
        self.slo: dict[str, tuple[float, float, float]] = {}  # ttft, tpot, weight
        self.last_step: dict[str, float] = {}
        self.plan_rows: dict[str, PlanRow] = {}
        self._now = 0.0
        self.compute_bw = 4e9  # bytes of weights computed per second, seed (learned)
        # observed time per token of running requests / the predicted one (the sum of
        # the busy models' step times): what the predictions leave out (prefill steps
        # interleaved, a shared CPU), learned from the engine's own steps
        self.contention = 1.0
        self._turn: str | None = None  # the model served while others wait their turn
        self._turn_end = 0.0  # when the turn's served batch was predicted to drain
        self._pause_until: dict[str, float] = {}  # paused running models: when their TPOT slack is spent
        self._hold: set[str] = set()  # models that admit no new request now (pick)
        self._pred_tpot: dict[str, float] = {}

    # ------------------------------------------------------------ step choice
    def pick(self, cands: list[Candidate]) -> tuple[str, str] | None:
        # a held model (its turn ends when its batch drains) only decodes
        cands = [dataclasses.replace(c, queued=0) if c.id in self._hold else c for c in cands]
        ready = [c for c in cands if c.runnable]
        if not ready:
            return None
        import time

        t = time.perf_counter()

        def slack(c: Candidate) -> float:
            ttft, tpot, w = self.slo.get(c.id, (DEFAULT_TTFT_S, DEFAULT_TPOT_S, 1.0))
            if c.action == "prefill":
                return (c.oldest + ttft - t) / w
            return (self.last_step.get(c.id, t) + tpot - t) / w

        # A decode step whose TPOT deadline has passed goes first (most overdue first);
        # otherwise prefills first, as vLLM does (a first token soon, TTFT), the one
        # closest to its TTFT deadline first; then decodes, least slack first.
        overdue = [c for c in ready if c.action == "decode" and slack(c) < 0]
        prefills = [c for c in ready if c.action == "prefill"]
        pool = overdue or prefills or ready
        c = min(pool, key=lambda c: (slack(c), c.id))
        self.last_step[c.id] = t
        return c.id, c.action

    # ------------------------------------------------------------ learning
    def _l(self, m: ModelView) -> _Learned:
        lr = self.learned.get(m.id)
        if lr is None:
            lr = self.learned[m.id] = _Learned(step_s={}, reload_s={}, extra_s={}, last_t=self._now,
                                               last_tokens=m.decode_tokens, last_s=m.decode_s)
        return lr

    def _observe(self, view: View) -> None:
        for m in view.models.values():
            self.slo[m.id] = (m.slo_ttft_s or DEFAULT_TTFT_S, m.slo_tpot_s or DEFAULT_TPOT_S, m.slo_weight)
            lr = self._l(m)
            dt = view.now - lr.last_t
            if dt > 0:
                new = m.arrived - lr.last_arrived
                inst = new / dt
                a = min(1.0, dt / 2.0)  # time constant about 2 s
                lr.rate = (1 - a) * lr.rate + a * inst
            lr.last_arrived, lr.last_t = m.arrived, view.now
            if m.busy or m.arrived > lr.last_arrived:
                lr.last_active = view.now
            dtok, ds = m.decode_tokens - lr.last_tokens, m.decode_s - lr.last_s
            self._observe_tpot(view, m, lr)
            lr.last_tokens, lr.last_s = m.decode_tokens, m.decode_s
            if dtok > 0 and ds > 0 and not m.preempted and not m.climbing:
                steps = dtok / max(1, m.running)
                meas = ds / max(steps, 1e-9)
                key = (m.resident, m.mode if m.resident < m.n_layers else "resident")
                old = lr.step_s.get(key)
                lr.step_s[key] = meas if old is None else (1 - EWMA) * old + EWMA * meas
                self._calibrate(view, m, lr, meas)
            for rep in m.reloads[lr.reports_seen:]:
                if rep.reload_s is not None:
                    old = lr.reload_s.get(rep.weights)
                    lr.reload_s[rep.weights] = rep.reload_s if old is None else (1 - EWMA) * old + EWMA * rep.reload_s
            lr.reports_seen = len(m.reloads)

    def _observe_tpot(self, view: View, m: ModelView, lr: _Learned) -> None:
        """Contention: wall seconds per token of the model's running requests since
        its last token-bearing plan (a plan window without a token is part of the
        next one's time, not skipped), against the TPOT predicted then."""
        if not m.running or m.preempted or m.climbing:
            lr.tp_t = None
            if not m.running:
                lr.obs_tpot = None
            return
        if lr.tp_t is None:
            lr.tp_t, lr.tp_tok, lr.tp_pred = view.now, m.decode_tokens, self._pred_tpot.get(m.id)
            return
        if m.decode_tokens > lr.tp_tok:
            steps = (m.decode_tokens - lr.tp_tok) / m.running
            if steps >= 1:
                obs = (view.now - lr.tp_t) / steps
                # time-weighted (a time constant of about a second, not a fixed share
                # per 50 ms window): one busy window on a shared CPU moves it little
                a = min(1.0, (view.now - lr.tp_t) / CONTENTION_TAU_S)
                lr.obs_tpot = obs if lr.obs_tpot is None else (1 - a) * lr.obs_tpot + a * obs
                if lr.tp_pred:
                    self.contention = min(8.0, max(1.0, (1 - a) * self.contention + a * obs / lr.tp_pred))
            lr.tp_t, lr.tp_tok, lr.tp_pred = view.now, m.decode_tokens, self._pred_tpot.get(m.id)

    def _calibrate(self, view: View, m: ModelView, lr: _Learned, meas: float) -> None:
        """Fit the linear cost model to a measurement: at full residency it gives the
        compute per block; at k blocks in a mode, the extra per offloaded block in
        that mode (what streaming or host execution really costs on this machine)."""
        n, k = m.n_layers, m.resident
        if k == n or lr.compute_block_s is None:
            c = meas / (n + 1) if k == n else None
            if c is None:  # first measurement is partial: compute from the others' rate
                c = m.block_bytes / self.compute_bw
                if k < n:
                    c = min(c, meas / (n + 1))
            lr.compute_block_s = c if lr.compute_block_s is None or k < n else (1 - EWMA) * lr.compute_block_s + EWMA * c
            if k == n:
                self.compute_bw = 0.5 * self.compute_bw + 0.5 * m.block_bytes / lr.compute_block_s
        if k < n:
            extra = max(0.0, (meas - lr.compute_block_s * (n + 1)) / (n - k))
            old = lr.extra_s.get(m.mode)
            lr.extra_s[m.mode] = extra if old is None else (1 - EWMA) * old + EWMA * extra

    def _model_step(self, view: View, m: ModelView, lr: _Learned, k: int, mode: str, raw: bool = False) -> float:
        """Cost model: seconds per decode step with the first k blocks resident: every
        block computes (c each, the embedding/head about one more), each offloaded
        block adds its mode's extra (measured; seeded: stream = its bytes over the
        link, no overlap assumed; host = (host_slowdown - 1) x its compute)."""
        c = lr.compute_block_s
        if c is None:  # seed: a block's bytes at the compute rate measured on other models
            c = m.block_bytes / self.compute_bw
        n = m.n_layers
        t = c * (n + 1)
        if k < n:
            if mode in lr.extra_s:
                extra = lr.extra_s[mode]
            elif mode == "stream":
                # at least a block's compute: copying its bytes in costs about what
                # reading them does (no overlap assumed until measured)
                extra = max(self.link_s(view, m, m.block_bytes), c)
            else:
                slow = m.pacing.host_slowdown_factor if m.pacing is not None else view.host_slowdown
                extra = c * (slow - 1) + 2e-5
            t += (n - k) * extra
        return t

    def step_s(self, view: View, m: ModelView, k: int, mode: str) -> float:
        lr = self._l(m)
        key = (k, mode if k < m.n_layers else "resident")
        if key in lr.step_s:
            return lr.step_s[key]
        return self._model_step(view, m, lr, k, mode)

    def reload_s(self, view: View, m: ModelView, weights: str) -> float:
        lr = self._l(m)
        if weights in lr.reload_s:
            return lr.reload_s[weights]
        t = self.link_s(view, m, m.weight_bytes, copies=m.n_layers + 1)
        if weights != "disk":
            return t
        if m.pacing is not None:  # the profile's storage, dilated (engine/dilation.py)
            return t + m.pacing.reload_s(m.weight_bytes)
        return t + m.weight_bytes / (DISK_GBPS_SEED * 1e9)

    @staticmethod
    def link_s(view: View, m: ModelView, nbytes: float, copies: int = 1) -> float:
        """Seconds to copy ``nbytes`` onto the accelerator for this model: its own
        pacing under a profile (per-copy cost and dilated GB/s), else the device's link."""
        if m.pacing is not None:
            return m.pacing.copy_s(nbytes, copies, "h2d")
        return nbytes / (view.link_gbps * 1e9)

    def park_to(self, view: View, m: ModelView) -> str:
        """Host RAM when it has room (reload over the link only), else disk."""
        if m.weight_bytes * 2 < view.host_free and self.reload_s(view, m, "host") <= self.reload_s(view, m, "disk"):
            return "host"
        return "disk"

    # ------------------------------------------------------------ planning
    def at_load(self, view, new, residency, mode):
        self._now = view.now
        acts = []
        need = view.bytes_for(new.id, max(new.min_layers, int(round(residency * new.n_layers))), mode)
        free = view.free
        for m in sorted(view.models.values(), key=lambda m: m.last_used):
            if free >= need:
                break
            if m.busy or m.pin or m.preempted or m.id == new.id:
                continue
            acts.append(evict(m.id, f"load {new.id}: park idle {m.id}'s weights on the {self.park_to(view, m)}",
                              weights=self.park_to(view, m)))
            free += m.accel_bytes
        if free < need:  # load it as small as it can be: the plan grows it when it has work
            k = view.max_layers_within(new.id, free, "stream")
            if k is not None and k >= new.min_layers:
                return LoadPlan(k / new.n_layers, "stream", tuple(acts), f"planner: load {new.id} at {k}/{new.n_layers} blocks (what is free)")
        return LoadPlan(residency, mode, tuple(acts))

    def _tpot(self, view: View, ks: dict[str, tuple[int, str]], busy: list[ModelView], m: ModelView) -> float:
        # a request's time per token: its model's step plus the steps of every other
        # busy model interleaved with it (one step each, as EDF/round robin do)
        return sum(self.step_s(view, b, *ks[b.id]) for b in busy) * self.contention

    def _cost(self, view, ks, busy) -> tuple[float, float]:
        """(weighted SLO violation, -goodput) of a placement: lower is better."""
        viol, good = 0.0, 0.0
        tp = sum(self.step_s(view, b, *ks[b.id]) for b in busy) * self.contention
        for b in busy:
            slo = self.slo.get(b.id, (DEFAULT_TTFT_S, DEFAULT_TPOT_S, 1.0))
            target = slo[1] * SLO_MARGIN  # headroom for noise
            viol += b.slo_weight * max(0.0, tp - target) / target
            if b.queued and b.max_batch and b.running >= b.max_batch:
                # a backlog behind a full batch: its oldest request's first token waits
                # for the batch's longest remainder at this placement's time per token
                # (the faster the model steps, the sooner it gets a slot: TTFT)
                ttft = slo[0] * SLO_MARGIN
                viol += b.slo_weight * max(0.0, b.oldest_wait_s + b.running_left * tp - ttft) / ttft
            lr = self.learned.get(b.id)
            if lr is not None and lr.rate > 0 and b.max_batch:
                # queueing (Little's law): requests arriving at its observed rate, each
                # holding a batch slot for its tokens at this time per token, need
                # rate x tokens x tp slots; beyond max_batch the queue, and TTFT, grow
                # without bound (a burst served slowly misses its later requests)
                per_req = b.max_new_tokens / max(1, b.queued + b.running)
                rho = lr.rate * per_req * tp / b.max_batch
                viol += b.slo_weight * max(0.0, rho - 1.0)
            good += max(1, b.running) / tp if tp > 0 else 0.0
        return viol, -good

    def plan(self, view: View) -> list[Action]:
        self._now = view.now
        self._observe(view)
        self.plan_rows = {}  # this plan's rows only (the lab shows them)
        models = list(view.models.values())
        active = [m for m in models if m.busy or view.now - self._l(m).last_active < ACTIVE_S
                  or self._l(m).rate > 0.5]
        busy = [m for m in active if m.busy]
        pinned = [m for m in models if m.pin]
        keep = {m.id: m for m in active + pinned}
        # the minimum each kept model needs
        ks: dict[str, tuple[int, str]] = {}
        for m in keep.values():
            k0 = m.min_layers if m.pin else 0
            # the cheaper offload mode at the minimum (host needs no stream window)
            ks[m.id] = min(((k0, md) for md in ("host", "stream")), key=lambda p: view.bytes_for(m.id, *p))
        # no demotion of a model that is serving and meeting its TPOT target where it
        # is: its current placement is its floor (taking its blocks would cost it link
        # time and steps for another model's gain); floors give way first when the
        # minimums do not fit
        floors = {}
        for m in busy:
            obs = self._l(m).obs_tpot  # what its running requests get where it is now
            if not m.running or m.preempted or m.climbing or obs is None:
                continue
            if m.id in ks and m.resident > ks[m.id][0] and obs <= self.slo.get(m.id, (0, DEFAULT_TPOT_S, 1))[1]:
                floors[m.id] = ks[m.id]
                ks[m.id] = (m.resident, m.mode)

        def need(mid: str) -> int:
            k, mode = ks[mid]
            m = view.models[mid]
            return view.bytes_for(mid, k, mode) + int(m.kv_bytes * KV_HEADROOM)

        acts: list[Action] = []
        budget = int(view.budget * 0.97)  # a little slack: KV grows between plans
        total = sum(need(mid) for mid in ks)
        for mid, p in floors.items():
            if total <= budget:
                break
            total -= need(mid)
            ks[mid] = p
            total += need(mid)
        # 1. if the minimums do not fit: recently active models without work leave
        # first, then the busy, unpinned model with the least SLO weight is preempted
        for m in sorted((m for m in active if not m.busy and not m.pin), key=lambda m: m.last_used):
            if total <= budget:
                break
            total -= need(m.id)
            del ks[m.id]
        victims = sorted((m for m in busy if not m.pin and not m.preempted),
                         key=lambda m: (m.slo_weight, -m.oldest_wait_s, m.id))
        while total > budget and victims:
            v = victims.pop(0)
            total -= need(v.id)
            del ks[v.id]
            busy = [b for b in busy if b.id != v.id]
            acts.append(Action(C.Preempt(model=v.id, kv="swap", weights="host"),
                               f"the busy models' minimums need more than the budget: preempt {v.id} "
                               f"(lowest SLO weight {v.slo_weight:g}), KV to the host, weights parked on the host"))
        # 2. grow, block by block, where it lowers (SLO violation, -goodput) most per byte
        room = budget - total
        while True:
            best = None
            base = self._cost(view, ks, busy)
            for mid, (k, mode) in ks.items():
                m = view.models[mid]
                if k >= m.n_layers or not m.busy and not m.pin:
                    continue
                for mode2 in ("stream", "host"):
                    if k + 1 == m.n_layers and mode2 == "host":
                        continue
                    extra = view.bytes_for(mid, k + 1, mode2) - view.bytes_for(mid, k, mode)
                    if extra > room:
                        continue
                    trial = dict(ks)
                    trial[mid] = (k + 1, mode2)
                    c = self._cost(view, trial, busy)
                    # SLO violation first, then goodput; then, at equal cost, residency
                    # (a resident block costs nothing per step and needs no link)
                    gain = (base[0] - c[0]) * 1e3 + (base[1] - c[1]) + 1e-9
                    score = gain / max(extra, 1)
                    if gain > 0 and (best is None or score > best[0]):
                        best = (score, mid, k + 1, mode2, extra)
            if best is None:
                break
            _, mid, k, mode, extra = best
            ks[mid] = (k, mode)
            room -= extra
        # kept models without work keep what they hold while the room allows
        for mid, (k, mode) in list(ks.items()):
            m = view.models[mid]
            if not m.busy and not m.preempted and m.resident > k:
                extra = view.bytes_for(mid, m.resident, m.mode) - view.bytes_for(mid, k, mode)
                if extra <= room:
                    ks[mid] = (m.resident, m.mode)
                    room -= extra
        # host mode at the chosen count, where it is faster and frees the stream window
        for mid, (k, mode) in list(ks.items()):
            m = view.models[mid]
            if k < m.n_layers and mode == "stream" and self.step_s(view, m, k, "host") < self.step_s(view, m, k, "stream"):
                ks[mid] = (k, "host")
        # 2a. the greedy split puts blocks where they are cheapest per byte, which can
        # leave every model offloaded; compare with the most urgent model whole and
        # the others filled into the rest (the offloaded blocks then all belong to
        # the others, each with the most blocks that fit)
        if len(busy) >= 2:
            alt = self._whole_fill(view, ks, busy, budget)
            if alt is not None and self._cost(view, alt, busy) < self._cost(view, ks, busy):
                ks = alt
        # 2b. taking turns: when sharing the accelerator still misses TPOT targets,
        # compare with serving the most urgent model (nearly) whole while the models
        # with only queued requests wait, weights parked on the host (cheap to bring
        # back). A model with running requests waits only when its TPOT slack
        # absorbs the pause (_pausable).
        viol_share = self._cost(view, ks, busy)[0]
        turn = self._turn_now(view)  # reads the last plan's hold
        self._hold = set()
        offloaded = any(ks[b.id][0] < b.n_layers for b in busy if b.id in ks)
        if turn is not None or (len(busy) >= 2 and (viol_share > 0 or offloaded)):
            alt = self._turns(view, ks, busy, budget, served=turn)
            # at equal predicted violation, turns: every busy model whole when served
            # (its blocks computed where they live, no link time per step)
            if alt is not None and (turn is not None or alt[2] <= viol_share):
                ks2, waiting, viol_turns, u, wait = alt
                # a turn lasts while the served model has running requests (no flapping
                # between sharing and turns at every plan), unless a waiting model's
                # TTFT is at risk (_turn_now)
                if self._turn != u:
                    self._turn_end = view.now + wait
                self._turn = u
                pausable = self._pausable(view, busy, view.models[u])
                for w in waiting:
                    ks.pop(w.id, None)
                    busy = [b for b in busy if b.id != w.id]
                    if not w.preempted:
                        paused = ""
                        if w.running and w.id in pausable:
                            # its running requests absorb the pause within their TPOT
                            # target: the turn ends when that slack is spent (_turn_now)
                            self._pause_until[w.id] = view.now + pausable[w.id]
                            paused = (f"; its {w.running} running request(s) pause: {pausable[w.id]:.2f} s of TPOT "
                                      f"slack against {self._pause_s(view, view.models[u]):.2f} s for {u}'s batch")
                        acts.append(Action(C.Preempt(model=w.id, kv="swap", weights="host"),
                                           f"taking turns: sharing misses targets (weighted violation "
                                           f"{viol_share:.2f}, {viol_turns:.2f} in turns); {w.id} waits while {u} "
                                           f"is served, weights parked on the host{paused}"))
                    self.plan_rows[w.id] = PlanRow(w.id, 0, w.n_layers, "host", 0.0, 0.0, "waits its turn")
                ks.update(ks2)
                # admission order: the served model admits no new request while a
                # model that has waited longer waits its turn (its batch drains first)
                um = view.models[u]
                if any(w.oldest_wait_s > (um.oldest_wait_s if um.queued else 0.0) for w in waiting) \
                        and self._admit_delays(um):
                    self._hold = {u}
        # 3. who has to leave for this: idle, unpinned, loaded models, least recently used first
        planned = sum(view.bytes_for(mid, *ks[mid]) + view.models[mid].kv_bytes for mid in ks)
        others = sorted((m for m in models if m.id not in ks and not m.preempted and not m.pin),
                        key=lambda m: m.last_used)
        other_bytes = sum(m.accel_bytes for m in others)
        for m in others:
            if planned + other_bytes <= view.budget:
                break
            w = self.park_to(view, m)
            acts.append(evict(m.id, f"idle {view.now - m.last_used:.1f} s; its memory goes to "
                                    f"{', '.join(sorted(b.id for b in busy)) or 'the active models'}: weights to the {w} "
                                    f"(reload {self.reload_s(view, m, w) * 1e3:.0f} ms)", weights=w))
            other_bytes -= m.accel_bytes
        # 4. moves with hysteresis: only when the plan beats what is placed now by a
        # margin (moves cost link time and stall decode), or something must change
        # (a resume, an eviction, a pinned model below its minimum, over budget)
        cur = {mid: (view.models[mid].resident, view.models[mid].mode) for mid in ks}
        live = [b for b in busy if not b.preempted]
        # what the next window's observed time per token is compared with (contention)
        running = [b for b in view.models.values() if b.busy and not b.preempted]
        now_tp = sum(self.step_s(view, b, b.resident, b.mode) for b in running)
        self._pred_tpot = {b.id: now_tp for b in running if b.running}
        cv, cg = self._cost(view, cur, live)
        pv, pg = self._cost(view, ks, live)
        over = sum(view.bytes_for(mid, *cur[mid]) + view.models[mid].kv_bytes
                   for mid in ks if not view.models[mid].preempted) > budget
        must = over or bool(acts) or any(view.models[mid].preempted and view.models[mid].busy for mid in ks) \
            or any(m.pin and m.resident < m.min_layers for m in pinned)
        worth = (cv - pv) > 0.3 * max(cv, 0.2) or (pg < cg * 1.3 and pv <= cv)
        shrinks, grows, resumes = [], [], []
        for mid, (k, mode) in ks.items():
            m = view.models[mid]
            pred = self.step_s(view, m, k, mode)
            tpot = self._tpot(view, ks, busy, m) if m.busy else pred
            slo = self.slo.get(mid, (DEFAULT_TTFT_S, DEFAULT_TPOT_S, 1.0))
            binding = "slo met" if tpot <= slo[1] else ("budget" if room < m.block_bytes else "compute")
            if m.pin and k == m.min_layers and k < m.n_layers:
                binding = "pinned minimum"
            self.plan_rows[mid] = PlanRow(mid, k, m.n_layers, mode, 1.0 / pred if pred else 0.0, tpot, binding)
            why = (f"predicted {1.0 / pred:.0f} tok/s, TPOT {tpot * 1e3:.0f} ms (x{self.contention:.1f} observed contention) "
                   f"{'meets' if tpot <= slo[1] else 'misses'} its {slo[1] * 1e3:.0f} ms")
            if m.preempted:
                if m.auto_preempted and m.busy and view.now - self._l(m).last_refused > 0.1:
                    # pipelined when the reload costs many decode steps (a slow link: the
                    # first token comes long before the weights are back); on a link that
                    # reloads in about a step, the sequential reload is sooner (docs/policies.md)
                    rel = self.reload_s(view, m, m.parked or "host")
                    pipe = rel > PIPELINE_STEPS * self.step_s(view, m, m.n_layers, "resident")
                    # A pipelined climb trades TPOT for TTFT: its first tokens come at the
                    # offloaded steps' speed. When the oldest waiting request's TTFT
                    # target still absorbs the whole reload, the sequential one meets both.
                    absorbs = m.oldest_wait_s + rel <= SLO_MARGIN * slo[0]
                    if pipe and absorbs:
                        pipe = False
                        how = (f"sequentially (reload {rel * 1e3:.0f} ms: its oldest request's "
                               f"{slo[0] * 1e3:.0f} ms TTFT absorbs it)")
                    else:
                        how = "pipelined" if pipe else f"sequentially (reload {rel * 1e3:.0f} ms, about a step)"
                    resumes.append((m, k, mode, pipe, how, why))
                continue
            if not (must or worth) or (m.climbing and not must):
                continue
            lr = self._l(m)
            cur = (m.resident, m.mode)
            if (k, mode) == cur or (k == m.n_layers and m.resident == m.n_layers):
                continue
            below_min = m.pin and m.resident < m.min_layers
            small = abs(k - m.resident) < MIN_MOVE_BLOCKS and mode == m.mode
            # hysteresis in link time: a move that costs the link milliseconds may follow
            # the last one soon (a burst needs its blocks now); a slow link dwells long
            moved = abs(k - m.resident)
            dwell = min(DWELL_S, max(MIN_DWELL_S, DWELL_LINK_X * self.link_s(view, m, moved * m.block_bytes, moved)))
            # within its dwell a busy model is not moved again, either way, unless
            # the budget is exceeded now or a pin's minimum needs it (an idle one has
            # no service to lose) (a resume that needs
            # its room comes back with what is free: _fit_resumes)
            if m.busy and not below_min and not over and view.now - lr.last_move < dwell:
                continue
            if small and not below_min:
                continue
            lr.last_move = view.now
            freed = m.accel_bytes - m.kv_bytes - view.bytes_for(mid, k, mode)
            if k == 0 and not m.busy and not m.pin:
                # an idle model left with no block would serve its next request with
                # every block offloaded: park it instead (the reload is cheap and
                # pipelined), so its next burst goes through the plan (turns or share)
                w = self.park_to(view, m)
                shrinks.append(evict(mid, f"{mid} idle, its blocks go to the busy models: weights parked on the "
                                          f"{w} (reload {self.reload_s(view, m, w) * 1e3:.0f} ms)", weights=w))
                continue
            act = Action(C.SetResidency(model=mid, residency=k / m.n_layers, mode=mode),
                         f"{mid} to {k / m.n_layers:.0%} {mode}: {why}"
                         + (f"; frees {freed / 2**20:.0f} MiB" if freed > 0 else ""))
            (shrinks if freed > 0 else grows).append(act)
        resumes = self._fit_resumes(view, acts + shrinks, resumes)
        evicted = {a.model for a in acts if isinstance(a.cmd, C.Preempt)}
        for m in models:  # the models this plan leaves out: idle, evicted or preempted
            if m.id not in self.plan_rows:
                gone = m.preempted or m.id in evicted
                self.plan_rows[m.id] = PlanRow(m.id, 0 if gone else m.resident, m.n_layers, m.mode, 0.0, 0.0,
                                               "preempted" if m.preempted else "evicted" if gone else "idle")
        return acts + shrinks + resumes + grows

    def _fit_resumes(self, view: View, before: list[Action], resumes: list[tuple]) -> list[Action]:
        """Resume actions sized to the memory free once the evictions and shrinks that
        run before them are done: a resume the budget refuses (admitted requests hold
        headroom the plan does not see) costs the waiting request a retry, so a model
        comes back with the most blocks that fit now (the rest on the host) and grows
        at a later plan."""
        free = view.free
        for a in before:
            m = view.models.get(a.model)
            if m is None or m.preempted:
                continue
            if isinstance(a.cmd, C.Preempt):
                free += m.accel_bytes
            elif isinstance(a.cmd, C.SetResidency):
                k = int(round(a.cmd.residency * m.n_layers))
                free += max(0, m.accel_bytes - m.kv_bytes - view.bytes_for(m.id, k, a.cmd.mode or m.mode))
        free = int(free * 0.97)  # KV grows between the plan and the resume
        out = []
        for m, k, mode, pipe, how, why in resumes:
            k2, mode2 = k, mode
            while k2 > 0 and view.bytes_for(m.id, k2, mode2, kv=True) > free:
                k2, mode2 = k2 - 1, "host"
            if view.bytes_for(m.id, k2, mode2, kv=True) > free:
                k2, mode2 = k, mode  # nothing fits yet: ask anyway (refused: retried)
            note = "" if (k2, mode2) == (k, mode) else f" (now {k2}/{m.n_layers} {mode2}: what is free)"
            free -= view.bytes_for(m.id, k2, mode2, kv=True)
            # the climb starts with one block back and the rest offloaded in the mode the
            # cost model finds faster there: streaming on a slow link (a profile's, dilated)
            # costs every step the whole model's bytes, and takes the link from the climb
            start = min(("stream", "host"), key=lambda md: self.step_s(view, m, 1, md)) if pipe else mode2
            out.append(Action(C.Resume(model=m.id, residency=k2 / m.n_layers, mode=mode2, pipelined=pipe,
                                       start_mode=start),
                              f"{m.id} has work: resume {how} to {k}/{m.n_layers} blocks ({mode}){note}: {why}"))
        return out

    def _whole_fill(self, view: View, ks: dict, busy: list[ModelView], budget: int) -> dict | None:
        """The most urgent busy model whole, the other kept models filled block by
        block into the room left (each with its faster mode at that count)."""
        u = max(busy, key=lambda b: (b.slo_weight, b.running > 0, b.oldest_wait_s, b.id))
        if u.id not in ks:
            return None
        head = lambda mid: int(view.models[mid].kv_bytes * KV_HEADROOM)  # noqa: E731
        out = {mid: p for mid, p in ks.items()}
        out[u.id] = (u.n_layers, "stream")
        room = budget - sum(view.bytes_for(mid, *p) + head(mid) for mid, p in out.items())
        if room < 0:
            return None
        for b in sorted((b for b in busy if b.id != u.id and b.id in out), key=lambda b: -b.slo_weight):
            k0, md0 = out[b.id]
            base = view.bytes_for(b.id, k0, md0)
            best = (k0, md0)
            for k in range(b.n_layers, k0, -1):
                fit = [md for md in ("host", "stream") if view.bytes_for(b.id, k, md) - base <= room
                       and (k < b.n_layers or md == "stream")]
                if fit:
                    best = (k, min(fit, key=lambda md: self.step_s(view, b, k, md)))
                    break
            room -= view.bytes_for(b.id, *best) - base
            out[b.id] = best
        return out

    def _turn_now(self, view: View) -> str | None:
        """The model served in the current turn, or None when the turn is over: the
        served model has no request left (queued or running), or a waiting model has used more
        than TURN_TTFT_SHARE of its TTFT target."""
        u = self._turn
        if u is None:
            return None
        m = view.models.get(u)
        # over when the served model has nothing left, or when its batch has drained
        # while it is held (it admits nothing new while others wait: its held queue
        # would otherwise keep the turn, and the waiting models, going until their TTFT)
        over = m is None or not m.busy or (not m.running and u in self._hold)
        # a model paused with running requests waits only while its TPOT slack lasts
        for mid, until in list(self._pause_until.items()):
            w = view.models.get(mid)
            if w is None or not w.preempted or not w.busy:
                del self._pause_until[mid]
            elif view.now >= until:
                over = True
        for w in view.models.values():
            if w.id != u and w.busy and not w.running:
                ttft = self.slo.get(w.id, (DEFAULT_TTFT_S, DEFAULT_TPOT_S, 1.0))[0]
                # the turn's cost already charged the waiting models the predicted
                # wait: it ends early only once that prediction has run out
                over |= w.oldest_wait_s > TURN_TTFT_SHARE * ttft and view.now >= self._turn_end
        if over:
            self._turn = None
            self._pause_until.clear()  # the paused models come back with the turn's end
        return self._turn

    def _turns(self, view: View, ks: dict, busy: list[ModelView], budget: int, served: str | None = None):
        """The best plan where one model is served (nearly) whole beside the models
        with running requests, and the other busy models with only queued requests
        wait: (placements, waiting models, predicted violation, served model). Every
        busy model is tried as the served one (the current turn's only, while it lasts)."""
        pool = [b for b in busy if b.id == served] or busy
        best = None
        for u in pool:
            alt = self._turn_for(view, ks, busy, budget, u)
            if alt is not None and (best is None or alt[2] < best[2]):
                best = alt
        return best

    def _turn_for(self, view: View, ks: dict, busy: list[ModelView], budget: int, u: ModelView):
        """_turns with ``u`` served: its waiting ones' TTFT slip by u's batch's
        remaining work (and u's own queue by theirs)."""
        if u.id not in ks:
            return None
        pausable = self._pausable(view, busy, u)
        if u.id == self._turn:
            # a model paused for this turn stays paused while the turn lasts (its slack
            # is counted down by _turn_now): once the served model runs, _pausable no
            # longer offers it, and resuming it at once would cost both models the
            # moves for a share the turn was chosen against
            pausable.update({mid: until - view.now for mid, until in self._pause_until.items()
                             if mid != u.id and until > view.now})
        keep = [b for b in busy if (b.running and b.id not in pausable) or b.pin or b.id == u.id]
        waiting = [b for b in busy if b not in keep]
        if not waiting:
            return None
        if not u.running and any(w.oldest_wait_s > u.oldest_wait_s for w in waiting):
            # admission order: a model with nothing running whose requests arrived after
            # a waiting model's would be held at once (pick), ending its turn before it
            # served a token while the others paid the moves: not a turn
            return None
        ks2 = {mid: p for mid, p in ks.items() if mid not in {w.id for w in waiting}}
        room = budget - sum(view.bytes_for(mid, *p) + int(view.models[mid].kv_bytes * KV_HEADROOM)
                            for mid, p in ks2.items() if mid != u.id)
        for k in range(u.n_layers, ks[u.id][0], -1):
            fit = [md for md in ("stream", "host")
                   if view.bytes_for(u.id, k, md) + int(u.kv_bytes * KV_HEADROOM) <= room]
            if fit:
                ks2[u.id] = (k, min(fit, key=lambda md: self.step_s(view, u, k, md)))
                break
        viol = self._cost(view, ks2, keep)[0]
        step = sum(self.step_s(view, b, *ks2[b.id]) for b in keep) * self.contention
        # the served model stops admitting while others wait (pick holds its prefills),
        # so a waiting model's first token slips by its running batch's longest
        # remainder (a batch decodes together), not by its whole queue
        per_req = u.max_new_tokens / max(1, u.queued + u.running)
        wait = (u.running_left if u.running else per_req) * step
        # moves are lost service: the served model's reload (when it is parked) delays
        # every waiting model, and each waiting model's own reload (weights back from
        # the host when its turn comes) delays its first token
        if u.preempted:
            wait += self.reload_s(view, u, u.parked or "host")
        work = 0.0
        for w in waiting:
            ttft = self.slo.get(w.id, (DEFAULT_TTFT_S, DEFAULT_TPOT_S, 1.0))[0]
            back = self.reload_s(view, w, w.parked or "host")
            viol += w.slo_weight * max(0.0, w.oldest_wait_s + wait + back - ttft) / ttft
            work += w.max_new_tokens / max(1, w.queued + w.running) * self.step_s(view, w, w.n_layers, "stream") \
                * self.contention
        if u.queued and any(w.oldest_wait_s > u.oldest_wait_s for w in waiting):
            # and the served model's own queue waits for their turn (the hold applies
            # only when a waiting model has waited longer: pick's admission order)
            ttft = self.slo.get(u.id, (DEFAULT_TTFT_S, DEFAULT_TPOT_S, 1.0))[0]
            viol += u.slo_weight * max(0.0, u.oldest_wait_s + wait + work - ttft) / ttft
        return ks2, waiting, viol, u.id, wait

    @staticmethod
    def _admit_delays(m: ModelView) -> bool:
        """Whether admitting ``m``'s next queued request would make its running batch
        drain later by more than HOLD_STEPS steps: only then does a hold help the models
        that wait for the batch (a batch that has just started fills its free slots at
        no cost to them; holding it would leave the slots idle for the whole turn)."""
        if not m.running or not m.queued:
            return bool(m.running)
        q_tok = max(1.0, (m.max_new_tokens - m.running * m.running_left) / m.queued)  # per queued request
        return q_tok - m.running_left > HOLD_STEPS

    def _pause_s(self, view: View, u: ModelView) -> float:
        """Seconds serving ``u``'s waiting batch whole would take (its requests' tokens
        at its whole-model step, times the contention), with its reload."""
        per_req = u.max_new_tokens / max(1, u.queued + u.running)
        t = per_req * self.step_s(view, u, u.n_layers, "stream") * self.contention
        return t + (self.reload_s(view, u, u.parked or "host") if u.preempted else 0.0)

    def _pausable(self, view: View, busy: list[ModelView], u: ModelView) -> dict[str, float]:
        """Models with running requests that may wait while ``u``'s queued requests are
        served: preemption as a per-model penalty. A running model's requests keep
        their TPOT target if the pause, spread over the tokens they still make, fits
        in the slack between what they observe and the target (with the margin):
        model -> the longest pause it absorbs. Only for a ``u`` that is waiting with
        nothing running, never a pinned model."""
        if u.running or not u.queued:
            return {}
        pause = self._pause_s(view, u)
        out = {}
        for r in busy:
            lr = self._l(r)
            if r.id == u.id or not r.running or r.pin or r.preempted or r.climbing or lr.obs_tpot is None:
                continue
            target = self.slo.get(r.id, (DEFAULT_TTFT_S, DEFAULT_TPOT_S, 1.0))[1] * SLO_MARGIN
            left = max(1, r.running_left)
            slack = (target - lr.obs_tpot) * left - 2 * self.reload_s(view, r, "host")
            if slack > pause:
                out[r.id] = slack
        return out

    def on_decision(self, action: Action, ok: bool, view_now: float) -> None:
        if not ok and action.model in self.learned:
            self.learned[action.model].last_move = view_now  # do not retry at once
            self.learned[action.model].last_refused = view_now
