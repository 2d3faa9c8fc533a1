"""The planner's decision rules on hand-made views (no engine): each test fails if
its rule is broken (docs/policies.md, planner)."""

from __future__ import annotations

from labtui.engine import commands as C
from labtui.engine.policies.base import Action, ModelView, View
from labtui.engine.policies.planner import Planner

MiB = 2**20


def _mv(mid, **kw):
    base = dict(id=mid, state="serving", n_layers=8, resident=8, mode="stream", queued=0, running=0, priority=0,
                weight_bytes=8 * 10 * MiB + 4 * MiB, accel_bytes=8 * 10 * MiB + 4 * MiB, last_used=0.0,
                parked=None, auto_preempted=False, block_bytes=10 * MiB, max_batch=4)
    base.update(kw)
    return ModelView(**base)


def _view(models, free, now=10.0):
    def bytes_fn(mid, k, mode, kv):
        return 4 * MiB + k * 10 * MiB + (0 if k == 8 or mode == "host" else 10 * MiB) + (MiB if kv else 0)

    return View(now=now, budget=200 * MiB, free=free, link_gbps=25.0, host_slowdown=4.0,
                models={m.id: m for m in models}, bytes_fn=bytes_fn)


def test_a_resume_comes_back_with_what_is_free_after_the_plans_shrinks():
    p = Planner()
    b = _mv("B", state="preempted", resident=8, queued=2, parked="host", auto_preempted=True,
            accel_bytes=0)
    a = _mv("A", running=2)
    # 40 MiB free now; A's shrink from 8 to 6 blocks (stream) frees 84 - 74 = 10 MiB more
    view = _view([a, b], free=40 * MiB)
    shrink = Action(C.SetResidency(model="A", residency=6 / 8, mode="stream"), "test")
    out = p._fit_resumes(view, [shrink], [(b, 8, "stream", False, "sequentially", "why")])
    (r,) = out
    k = round(r.cmd.residency * 8)
    need = view.bytes_for("B", k, r.cmd.mode, kv=True)
    assert 0 < k < 8 and r.cmd.mode == "host" and need <= 0.97 * 50 * MiB
    assert view.bytes_for("B", k + 1, "host", kv=True) > 0.97 * 50 * MiB  # the most that fits
    # with room for it all, the planned placement is asked for unchanged
    (r2,) = p._fit_resumes(_view([a, b], free=150 * MiB), [], [(b, 8, "stream", False, "s", "w")])
    assert r2.cmd.residency == 1.0 and r2.cmd.mode == "stream"


def test_a_turn_ends_when_the_served_batch_drained_while_held():
    p = Planner()
    p._turn, p._turn_end, p._hold = "A", 0.0, {"A"}
    waiting = _mv("B", state="preempted", queued=1, oldest_wait_s=0.1, accel_bytes=0, parked="host")
    # A still has running requests: the turn goes on
    assert p._turn_now(_view([_mv("A", running=1, queued=2), waiting], free=0)) == "A"
    # its batch drained while it was held (queue left): over, the waiting model's turn
    assert p._turn_now(_view([_mv("A", running=0, queued=2), waiting], free=0)) is None


def test_a_turn_is_not_cut_before_the_wait_it_was_charged_has_passed():
    p = Planner()
    p._turn, p._hold = "A", set()
    waiting = _mv("B", state="preempted", queued=1, oldest_wait_s=0.6, accel_bytes=0, parked="host",
                  slo_ttft_s=1.0)
    p.slo["B"] = (1.0, 0.15, 1.0)
    served = _mv("A", running=2)
    p._turn_end = 11.0  # the turn was predicted to cost B its wait until t = 11 s
    assert p._turn_now(_view([served, waiting], free=0, now=10.5)) == "A"
    assert p._turn_now(_view([served, waiting], free=0, now=11.2)) is None


def test_a_running_model_is_paused_only_when_its_tpot_slack_absorbs_the_pause():
    p = Planner()
    p.slo.update({"A": (1.0, 0.15, 1.0), "B": (1.0, 0.15, 1.0)})
    b = _mv("B", state="preempted", queued=4, max_new_tokens=4 * 24, parked="host", accel_bytes=0)
    view = _view([_mv("A", running=4, running_left=20), b], free=0)
    p._l(view.models["B"]).step_s[(8, "resident")] = 0.02  # B whole: 24 tokens x 20 ms = 0.48 s
    p._l(view.models["B"]).reload_s["host"] = 0.01
    p._l(view.models["A"]).reload_s["host"] = 0.01
    p._l(view.models["A"]).obs_tpot = 0.03  # slack (0.12 - 0.03) x 20 tokens = 1.8 s
    assert "A" in p._pausable(view, list(view.models.values()), b)
    p._l(view.models["A"]).obs_tpot = 0.10  # slack 0.02 x 20 = 0.4 s < the 0.49 s pause
    assert p._pausable(view, list(view.models.values()), b) == {}
    p._l(view.models["A"]).obs_tpot = 0.03
    pinned = _view([_mv("A", running=4, running_left=20, pin=True), b], free=0)
    assert p._pausable(pinned, list(pinned.models.values()), b) == {}  # a pinned model never waits
    # nor for a model that is itself running (it is being served already)
    busy_b = _mv("B", running=1, queued=3, max_new_tokens=96)
    assert p._pausable(view, [view.models["A"], busy_b], busy_b) == {}


def test_a_model_paused_for_a_turn_stays_paused_while_the_turn_lasts():
    p = Planner()
    p.slo.update({"A": (1.0, 0.15, 1.0), "B": (1.0, 0.15, 1.0)})
    # A was paused with running requests for B's turn; B now runs (so A is no longer
    # offered as pausable for B) and A's slack lasts until t = 11.5 s
    a = _mv("A", state="preempted", running=4, running_left=12, parked="host", accel_bytes=0)
    b = _mv("B", running=4, queued=2, running_left=20, max_new_tokens=6 * 20)
    view = _view([a, b], free=0)
    p._l(a).obs_tpot = p._l(b).obs_tpot = 0.03
    ks = {"A": (0, "host"), "B": (8, "stream")}
    assert p._turn_for(view, ks, [a, b], 190 * MiB, b) is None  # no turn under way: A comes back
    p._turn, p._pause_until = "B", {"A": 11.5}
    alt = p._turn_for(view, ks, [a, b], 190 * MiB, b)
    assert alt is not None and [w.id for w in alt[1]] == ["A"] and "A" not in alt[0]
    # once its slack is spent the turn is over and A comes back with it
    assert p._turn_now(_view([a, b], free=0, now=11.6)) is None and p._pause_until == {}


def test_no_turn_for_a_model_with_nothing_running_whose_requests_came_later():
    p = Planner()
    p.slo.update({"A": (1.0, 0.15, 1.0), "B": (1.0, 0.15, 1.0)})
    a = _mv("A", state="preempted", queued=2, oldest_wait_s=0.4, max_new_tokens=48, parked="host", accel_bytes=0)
    b = _mv("B", state="preempted", queued=4, oldest_wait_s=0.2, max_new_tokens=96, parked="host", accel_bytes=0)
    view = _view([a, b], free=200 * MiB)
    ks = {"A": (0, "host"), "B": (0, "host")}
    # B would be held at once (A waited longer): not a turn; A's turn is one
    assert p._turn_for(view, ks, [a, b], 190 * MiB, b) is None
    alt = p._turn_for(view, ks, [a, b], 190 * MiB, a)
    assert alt is not None and alt[3] == "A" and [w.id for w in alt[1]] == ["B"]


def test_a_held_batch_fills_its_free_slots_while_that_does_not_delay_its_drain():
    # a batch that has just started (24 tokens left, queued requests of 24): admitting delays nothing
    assert not Planner._admit_delays(_mv("B", running=2, queued=2, running_left=24, max_new_tokens=96))
    # half way through: admitting would make it drain 12 steps later, so it is held
    assert Planner._admit_delays(_mv("B", running=2, queued=2, running_left=12, max_new_tokens=2 * 12 + 48))
    # nothing running: nothing to drain, a hold would only leave its slots idle
    assert not Planner._admit_delays(_mv("B", running=0, queued=4, max_new_tokens=96))


def test_under_a_profile_the_seeds_are_the_models_own_pacing_not_the_devices_link():
    """On sim under a hardware profile a model's copies, host blocks and disk reloads
    are paced by its Pacing (engine/dilation.py); the device's link and host_slowdown
    do not apply to it, so the planner's unmeasured predictions must not use them."""
    from labtui.engine.profiles import get_profile

    pacing = get_profile("study-a6000").pacing_for(0.02, 8 * 10 * MiB + 4 * MiB, n_layers=8,
                                                   block_bytes=10 * MiB)
    plain, paced = _mv("A"), _mv("B", pacing=pacing)
    view = _view([plain, paced], free=0)
    p = Planner()
    wb = plain.weight_bytes
    assert p.reload_s(view, plain, "host") == wb / 25e9  # the device's 25 GB/s
    assert p.reload_s(view, paced, "host") == pacing.copy_s(wb, 9, "h2d")
    assert p.reload_s(view, paced, "disk") == pacing.copy_s(wb, 9, "h2d") + pacing.reload_s(wb)
    assert p.reload_s(view, paced, "disk") > 100 * p.reload_s(view, plain, "disk")  # D x the study's 1.8 s
    # one streamed block costs its bytes over the model's dilated link, not the device's
    full = p.step_s(view, paced, 8, "stream")
    assert p.step_s(view, paced, 7, "stream") - full == max(pacing.copy_s(10 * MiB), full / 9)
    # a host block: the profile's host slowdown for this block size, not the device's 4x
    c = full / 9
    assert abs((p.step_s(view, paced, 7, "host") - full) - (c * (pacing.host_slowdown_factor - 1) + 2e-5)) < 1e-12
    assert pacing.host_slowdown_factor != 4.0


def _resume_of(p, wait_s):
    b = _mv("B", state="preempted", queued=2, oldest_wait_s=wait_s, max_new_tokens=48, parked="host",
            auto_preempted=True, accel_bytes=0, slo_ttft_s=1.0, slo_tpot_s=0.15)
    view = _view([b], free=190 * MiB)
    lr = p._l(b)
    lr.step_s[(8, "resident")] = 0.02
    lr.reload_s["host"] = 0.5  # 25 resident steps: worth pipelining for the first token
    (r,) = [a for a in p.plan(view) if isinstance(a.cmd, C.Resume)]
    return r


def test_a_resume_is_sequential_when_the_ttft_target_absorbs_the_reload():
    p = Planner()
    # waited 0.1 s: 0.1 + 0.5 s reload <= 80% of the 1 s target: the whole model first
    r = _resume_of(p, 0.1)
    assert r.cmd.pipelined is False and "absorbs" in r.reason
    # waited 0.5 s: the reload would make it miss: pipelined, the first token sooner
    assert _resume_of(Planner(), 0.5).cmd.pipelined is True


def test_a_pipelined_climb_starts_in_the_mode_that_is_faster_with_one_block_back():
    from labtui.engine.profiles import get_profile

    def start_mode(**kw):
        p = Planner()
        b = _mv("B", state="preempted", queued=1, parked="host", accel_bytes=0, **kw)
        (r,) = p._fit_resumes(_view([b], free=190 * MiB), [], [(b, 8, "stream", True, "pipelined", "why")])
        return r.cmd.start_mode

    # the device's 25 GB/s link against 4x slower host blocks: streaming
    assert start_mode() == "stream"
    # the study's link, dilated: a streamed block costs far more than a host-executed one
    pacing = get_profile("study-a6000").pacing_for(0.02, 8 * 10 * MiB + 4 * MiB, n_layers=8, block_bytes=10 * MiB)
    assert start_mode(pacing=pacing) == "host"
