"""The scenario format: the two-model example, built-ins, sources, lines, the writer."""

from __future__ import annotations

import filecmp
import tomllib
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from labtui.engine import commands as C
from labtui.errors import LabError
from labtui.scenario import tomlw
from labtui.scenario.schema import (
    BUILTIN_DIR,
    LINK_PRESET_NAMES,
    as_command,
    builtin_names,
    default_model_id,
    default_scenario_path,
    find_scenario,
    load_scenario,
    locate,
    parse_scenario,
)

REPO = Path(__file__).resolve().parent.parent

# The two-model example (labtui/scenarios/two-models.toml): it must load and run as written.
DESIGN_EXAMPLE = '''
[lab]
name = "two-models"
seed = 0

[device]
kind = "auto"            # auto | cuda | sim
memory_gib = 4           # sim budget; on cuda an optional cap
link = "pcie4-x16"       # sim: preset name or a number in GB/s
host_slowdown = 4.0      # sim only

[[models]]
id = "small"
source = "zoo:llama-30m" # zoo name, local HF directory, or hub id
residency = 1.0
offload = "stream"       # stream | host

[[models]]
id = "big"
source = "zoo:qwen3-150m"
residency = 0.5
offload = "host"

[[workloads]]
model = "small"
at = 0.0
kind = "closed"          # closed | poisson (then rate_per_s)
concurrency = 2
requests = 8
prompt_tokens = 64
max_new_tokens = 128

[[timeline]]
at = 5.0
action = "set_residency"
model = "big"
residency = 0.25

[[timeline]]
at = 8.0
action = "preempt"
model = "small"
kv = "swap"
weights = "host"

[[timeline]]
at = 12.0
action = "resume"
model = "small"
'''


def test_design_example_loads_as_written():
    s = parse_scenario(DESIGN_EXAMPLE, "design.toml")
    assert s.name == "two-models" and s.device.memory_gib == 4 and s.device.link == "pcie4-x16"
    assert [m.id for m in s.models] == ["small", "big"]
    cmds = s.commands()
    assert cmds[0] == (0.0, C.Load(id="small", source="zoo:llama-30m", residency=1.0, offload="stream"))
    assert cmds[1] == (0.0, C.Load(id="big", source="zoo:qwen3-150m", residency=0.5, offload="host"))
    assert cmds[2] == (0.0, C.LaunchWorkload(model="small", concurrency=2, requests=8,
                                             prompt_tokens=64, max_new_tokens=128))
    assert cmds[3:] == [
        (5.0, C.SetResidency(model="big", residency=0.25)),
        (8.0, C.Preempt(model="small", kv="swap", weights="host")),
        (12.0, C.Resume(model="small")),
    ]


def test_two_models_builtin_is_the_design_example():
    a = parse_scenario(DESIGN_EXAMPLE, "design.toml")
    b = load_scenario("two-models")
    assert a.commands() == b.commands() and a.device == b.device and b.lab.description


def test_builtins_present_and_valid():
    names = builtin_names()
    for n in ("offload-sweep", "preemption", "seq-length", "link-bandwidth", "tour", "default"):
        assert n in names
    for n in names:
        s = load_scenario(n)
        assert s.lab.description, n
        assert s.name == n


def test_root_scenarios_folder_matches_package_data():
    root = REPO / "scenarios"
    assert root.resolve() == BUILTIN_DIR or not filecmp.dircmp(root, BUILTIN_DIR).diff_files
    assert sorted(p.name for p in root.glob("*.toml")) == sorted(p.name for p in BUILTIN_DIR.glob("*.toml"))


def test_builtin_names_work_from_anywhere(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert find_scenario("offload-sweep") == BUILTIN_DIR / "offload-sweep.toml"
    assert default_scenario_path().is_file()
    assert load_scenario(default_scenario_path()).name == "default"


def test_a_local_file_wins_over_a_builtin_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "tour").write_text('[[models]]\nid = "x"\nsource = "zoo:llama-5m"\n')
    assert load_scenario("tour").models[0].id == "x"


def test_link_presets_match_the_engine():
    from labtui.engine.devices import LINK_PRESETS

    assert set(LINK_PRESET_NAMES) == set(LINK_PRESETS)


def test_relative_sources_resolve_against_the_scenario_file(tmp_path, monkeypatch):
    ckpt = tmp_path / "ckpts" / "tiny"
    ckpt.mkdir(parents=True)
    (tmp_path / "sc").mkdir()
    f = tmp_path / "sc" / "local.toml"
    f.write_text('[[models]]\nsource = "../ckpts/tiny"\n'
                 '[[timeline]]\naction = "load"\nid = "again"\nsource = "../ckpts/tiny"\n')
    monkeypatch.chdir(tmp_path / "ckpts")  # a cwd where the relative path means something else
    s = load_scenario(f)
    assert s.models[0].source == str(ckpt.resolve())
    assert s.models[0].id == "tiny"  # derived from the folder
    assert s.timeline[0].source == str(ckpt.resolve())


def test_hub_ids_pass_through():
    s = parse_scenario('[[models]]\nsource = "Qwen/Qwen3-0.6B"\n', "x.toml")
    assert s.models[0].source == "Qwen/Qwen3-0.6B" and s.models[0].id == "Qwen3-0.6B"


def test_timeline_entries_are_commands():
    s = load_scenario("tour")
    for t in s.timeline:
        cmd = as_command(t)
        assert type(cmd) is C.COMMAND_TYPES[t.action]
        assert not hasattr(cmd, "at")


def test_models_loaded_in_the_timeline_can_be_referenced_after():
    s = parse_scenario(
        '[[models]]\nid = "a"\nsource = "zoo:llama-5m"\n'
        '[[timeline]]\nat = 1\naction = "load"\nid = "b"\nsource = "zoo:llama-5m"\n'
        '[[timeline]]\nat = 2\naction = "preempt"\nmodel = "b"\n', "x.toml")
    assert s.model_ids() == ["a", "b"]


def test_when_forms():
    base = '[[models]]\nid = "a"\nsource = "zoo:llama-5m"\n[[workloads]]\nmodel = "a"\nid = "w"\n'
    for when in ('{ model = "a", tokens = 0 }', '{ model = "a", completed = 2 }', '{ workload = "w" }'):
        parse_scenario(base + f'[[timeline]]\naction = "resume"\nmodel = "a"\nwhen = {when}\n', "x.toml")
    for when in ('{ model = "a", tokens = 1, completed = 1 }', '{ workload = "w", tokens = 3 }', "{}"):
        with pytest.raises(LabError, match="when"):
            parse_scenario(base + f'[[timeline]]\naction = "resume"\nmodel = "a"\nwhen = {when}\n', "x.toml")


def test_error_line_numbers_point_at_the_key():
    raw = ('[lab]\nname = "x"\n\n[[models]]\nid = "a"\nsource = "zoo:llama-5m"\n\n'
           '[[models]]\nid = "b"\nsource = "zoo:llama-5m"\noffload = "disk"\n')
    with pytest.raises(LabError) as e:
        parse_scenario(raw, "f.toml")
    assert str(e.value).startswith("f.toml:11: models[1].offload: got 'disk'")
    assert locate(raw, ("models", 1)) == 8
    assert locate(raw, ("models", 1, "missing_key")) == 8  # falls back to the header
    assert locate(raw, ("lab", "name")) == 2
    assert locate(raw, ("nothing",)) is None


def test_default_model_id():
    assert default_model_id("zoo:llama-30m") == "llama-30m"
    assert default_model_id("/a/b/my model/") == "my-model"
    assert default_model_id("org/name") == "name"


# -- the TOML writer -------------------------------------------------------

_keys = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1, max_size=8)
_scalars = (st.booleans() | st.integers(-(2**63), 2**63 - 1)
            | st.floats(allow_nan=False) | st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=20))
_values = st.recursive(_scalars, lambda inner: st.lists(inner, max_size=4)
                       | st.dictionaries(_keys, inner, max_size=3), max_leaves=8)
_docs = st.dictionaries(_keys, _values | st.dictionaries(_keys, _values, max_size=3)
                        | st.lists(st.dictionaries(_keys, _values, min_size=1, max_size=3), min_size=1, max_size=2),
                        max_size=5)


@settings(max_examples=200, deadline=None)
@given(_docs)
def test_toml_writer_round_trips(doc):
    assert tomllib.loads(tomlw.dumps(doc)) == doc


def test_toml_writer_leaves_out_none_and_writes_header():
    text = tomlw.dumps({"a": None, "t": {"x": 1, "y": None}}, header="hello\nworld")
    assert text.startswith("# hello\n# world\n")
    assert tomllib.loads(text) == {"t": {"x": 1}}
