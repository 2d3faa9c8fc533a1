"""Time dilation on sim (engine/dilation.py): under a hardware profile a model's
copies, disk reloads and host blocks are paced so that the study's ratios are the
profile's; without one, sim is paced by its link exactly as before.

The ratios are measured in one run against a resident baseline taken in the same
run (two before, one after: their median). This machine's cores are shared and noisy, and
the dilation D itself is measured once at load: a busy core during that
measurement or during a baseline moves every ratio, so the tolerance is 35%
(a quiet run measured stream@0 48.7 vs 45.2 predicted, host@0 6.1 vs 5.3).
"""

from __future__ import annotations

import statistics
import time

import pytest

from labtui.engine.api import Engine
from labtui.engine.devices import make_device
from labtui.engine.profiles import get_profile
from labtui.engine.transfer import D2H, H2D, Link

TOL = 0.35
PROMPT = list(range(1, 9))


def _step(eng, mid, n=5) -> float:
    """Median decode step (s) of one batch-1 greedy request."""
    t = eng.generate(mid, PROMPT, max_new_tokens=n).token_times_s
    return statistics.median(b - a for a, b in zip(t[1:], t[2:], strict=False))


def _within(measured: float, predicted: float) -> bool:
    return abs(measured / predicted - 1) <= TOL


@pytest.fixture(scope="module")
def a6000_30m():
    """llama-30m under study-a6000: its pacing and the measured steps (s)."""
    yield _measure_a6000_30m()


def _measure_a6000_30m() -> dict:
    with Engine(device="sim", memory_gib=2, profile="study-a6000") as eng:
        mid = eng.load("zoo:llama-30m")
        hm = eng._models[mid].hm
        eng.set_residency(mid, 1.0)
        res = [_step(eng, mid), _step(eng, mid)]
        eng.set_residency(mid, 0.0, mode="stream")
        stream = _step(eng, mid, 4)
        eng.set_residency(mid, 0.0, mode="host")
        crossings = []
        real = hm.link.move_activation
        hm.link.move_activation = lambda t, d: crossings.append(d) or real(t, d)
        host = _step(eng, mid)
        del hm.link.move_activation
        eng.set_residency(mid, 1.0)
        res.append(_step(eng, mid))
        snap = eng.snapshot().models[0]
        return dict(hm=hm, res=statistics.median(res), stream=stream, host=host,
                    crossings_per_step=len(crossings) / 5, snap=snap)


def _ratio_or_remeasure(m: dict, ratio, predicted: float) -> float:
    """The measured ratio; if it is outside the tolerance, one fresh engine's.

    Why a second measurement: D is calibrated once per load, so one busy moment of
    this shared machine during that half second moves every later ratio by up to
    ~40% (seen in full-suite runs; alone the same test measures within 10%). A
    broken dilation is off in both measurements, so the check still fails then.
    """
    measured = ratio(m)
    if _within(measured, predicted):
        return measured
    return ratio(_measure_a6000_30m())


def test_load_measures_pacing_and_shows_it(a6000_30m):
    hm, snap = a6000_30m["hm"], a6000_30m["snap"]
    p = hm.pacing
    prof = get_profile("study-a6000")
    assert p is not None and p.profile == "study-a6000"
    # D = this machine's resident step / the target's (weights / 768 GB/s)
    assert p.dilation == pytest.approx(hm.resident_step_measured_s / prof.resident_step_s(hm.weight_bytes()))
    assert p.dilation > 1  # a CPU is slower than an A6000
    # the model's copies are paced by its pacing, not the device link's
    assert hm.link.pacing(H2D) == (pytest.approx(16e9 / p.dilation), pytest.approx(10e-6 * p.dilation))
    assert hm.link.pacing(D2H)[0] == pytest.approx(12e9 / p.dilation)
    assert snap.profile == "study-a6000" and snap.dilation == pytest.approx(p.dilation)


def test_stream_at_residency_0_keeps_the_profiles_ratio(a6000_30m):
    hm, m = a6000_30m["hm"], a6000_30m
    phys = get_profile("study-a6000").physics
    c = phys.resident_step_s(hm.weight_bytes())
    streamed = sum(b.nbytes for b in hm.blocks)
    predicted = phys.stream_step_s(c, streamed, hm.n_layers, prefetch=True) / c
    measured = _ratio_or_remeasure(m, lambda m: m["stream"] / m["res"], predicted)
    print(f"llama-30m study-a6000 stream@0/resident: measured {measured:.2f}, predicted {predicted:.2f}")
    assert predicted > 10  # the target's physics: streaming is far from free
    assert _within(measured, predicted), (measured, predicted)


def test_host_at_residency_0_keeps_the_profiles_ratio(a6000_30m):
    hm, m = a6000_30m["hm"], a6000_30m
    phys = get_profile("study-a6000").physics
    c = phys.resident_step_s(hm.weight_bytes())
    # blocks' share of the resident step ~ their share of the bytes read (the rest
    # unit: embeddings, norm, LM head, stays resident); activations cross the link
    # a few times per step (counted), each a per-copy latency
    c_block = c * sum(b.nbytes for b in hm.blocks) / hm.weight_bytes() / hm.n_layers
    host = (c - hm.n_layers * c_block) + phys.host_step_s(c_block, hm.n_layers, hm.n_layers, hm.blocks[0].nbytes)
    host += m["crossings_per_step"] * phys.copy_latency_s
    predicted = host / c
    measured = _ratio_or_remeasure(m, lambda m: m["host"] / m["res"], predicted)
    print(f"llama-30m study-a6000 host@0/resident: measured {measured:.2f}, predicted {predicted:.2f}")
    assert hm.pacing.host_slowdown_factor == pytest.approx(phys.host_slowdown(hm.blocks[0].nbytes))
    assert _within(measured, predicted), (measured, predicted)


def test_disk_reload_is_paced_to_the_profiles_storage():
    # the A6000's 1.8 s per load, dilated ~100-700x, would take minutes here: the
    # same profile with a small fixed cost keeps the bytes / GB/s term honest
    prof = get_profile("study-a6000").model_copy(update={"name": "a6000-fastload", "storage_fixed_s": 0.002})
    with Engine(device="sim", memory_gib=2, profile=prof) as eng:
        mid = eng.load("zoo:llama-5m")
        hm = eng._models[mid].hm
        eng.generate(mid, PROMPT, max_new_tokens=2)
        eng.preempt(mid, kv="drop", weights="disk")
        t0 = time.perf_counter()
        rep = eng.resume(mid)
        wall = time.perf_counter() - t0
        want = hm.pacing.reload_s(hm.weight_bytes())
        assert want == pytest.approx(hm.pacing.dilation * (0.002 + hm.weight_bytes() / 7.2e9))
        print(f"llama-5m disk reload: {rep.reload_s:.3f} s, paced at least {want:.3f} s (D={hm.pacing.dilation:.0f})")
        assert rep.reload_s >= want and wall >= want
        # and the tokens are still the model's
        r = eng.generate(mid, PROMPT, max_new_tokens=4)
    with Engine(device="sim", memory_gib=2) as ref:
        rid = ref.load("zoo:llama-5m")
        assert ref.generate(rid, PROMPT, max_new_tokens=4).token_ids == r.token_ids


def test_no_profile_means_no_pacing_and_the_link_unchanged():
    with Engine(device="sim", memory_gib=2, link="pcie4-x16") as eng:
        mid = eng.load("zoo:llama-5m")
        hm = eng._models[mid].hm
        assert hm.pacing is None and hm.link is eng.link  # no view: exactly today's link
        assert hm.link.pacing(H2D) == eng.device.link.pacing(H2D) == (25e9, 10e-6)
        snap = eng.snapshot().models[0]
        assert snap.profile is None and snap.dilation is None


def test_link_pacing_argument_wins_over_the_linkspec():
    dev = make_device("sim", 1, "pcie4-x16", 1.0, None)
    link = Link(dev)
    p = get_profile("study-a6000").pacing_for(0.01, 1e8)
    assert link.pacing(H2D) == (25e9, 10e-6)
    assert link.pacing(H2D, p) == (pytest.approx(p.h2d_gbps * 1e9), p.copy_latency_s)
    assert link.view(None) is link and link.view(p).pacing(D2H)[0] == pytest.approx(p.d2h_gbps * 1e9)
    link.close()


def test_model_card_says_as_on_profile_emulated():
    from dataclasses import replace

    from labtui.tui.widgets.model_card import state_line

    with Engine(device="sim", memory_gib=2) as eng:
        eng.load("zoo:llama-5m")
        ms = eng.snapshot().models[0]
    assert "emulated" not in state_line(ms)
    line = state_line(replace(ms, profile="study-a6000", dilation=123.4))
    assert line.endswith("· as on study-a6000 (time ×123, emulated)")


def test_header_says_as_on_profile_only_under_one():
    from dataclasses import replace

    from labtui.tui.widgets.header import DeviceBar

    with Engine(device="sim", memory_gib=2) as eng:
        eng.load("zoo:llama-5m")
        snap = eng.snapshot()
    shown = []
    bar = DeviceBar()
    bar.update = lambda t, layout=False: shown.append(t.plain)  # not mounted: capture the text
    bar.get_component_rich_style = lambda name: ""
    bar.show(snap)
    assert "as on" not in shown[-1] and "(time dilated, emulated)" not in shown[-1]
    bar.show(replace(snap, models=(replace(snap.models[0], profile="study-a6000", dilation=200.0),)))
    assert "as on study-a6000 (time dilated, emulated)" in shown[-1]


def test_disk_reload_with_the_builtin_fixed_cost_is_paced_at_a_capped_dilation():
    # the built-in 1.8 s per load at D ~ 100 would be minutes: capped at x1 the
    # reload takes the target's own storage time, 1.8 s + bytes / 7.2 GB/s
    prof = get_profile("study-a6000").capped(1)
    with Engine(device="sim", memory_gib=2, profile=prof) as eng:
        mid = eng.load("zoo:llama-5m")
        hm = eng._models[mid].hm
        assert hm.pacing.dilation == 1 and hm.pacing.measured_dilation > 1
        eng.generate(mid, PROMPT, max_new_tokens=2)
        eng.preempt(mid, kv="drop", weights="disk")
        rep = eng.resume(mid)
        want = 1.8 + hm.weight_bytes() / 7.2e9
        print(f"llama-5m disk reload at cap 1: {rep.reload_s:.3f} s, target {want:.3f} s")
        assert want <= rep.reload_s <= want * 1.25
