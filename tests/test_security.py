"""Security: what the lab reads cannot run code, and the lab listens on no port.

- checkpoints load through safetensors only: pickle weights (pytorch_model.bin) are
  refused, and never unpickled even when they sit beside safetensors weights;
- trust_remote_code stays off unless the user passes it: a checkpoint whose config
  points at custom modeling code never runs that code; the flag reaches
  from_pretrained only when set;
- scenario files are TOML only, read as data: python-looking strings stay strings;
  the package itself has no eval/exec/pickle paths (checked on its source);
- relative paths in a scenario resolve against the scenario file, never the cwd;
- the engine (load + generate) and the lab (Textual app) open no listening socket.
"""

from __future__ import annotations

import ast
import asyncio
import json
import os
import pickle
import shutil
from pathlib import Path

import psutil
import pytest

from labtui.engine import Engine
from labtui.errors import LabError

PKG = Path(__file__).resolve().parent.parent / "labtui"


class _Bomb:
    """Unpickling this creates ``path`` (a stand-in for arbitrary code)."""

    def __init__(self, path: Path):
        self.path = str(path)

    def __reduce__(self):
        return (os.mkdir, (self.path,))


def _pickle_bomb(f: Path, marker: Path) -> None:
    f.write_bytes(pickle.dumps({"model.embed_tokens.weight": _Bomb(marker)}))


@pytest.fixture(scope="module")
def eng():
    e = Engine(device="sim", memory_gib=0.5, link=20.0, host_slowdown=1.0)
    yield e
    e.close()


@pytest.fixture
def ckpt(zoo_path, tmp_path) -> Path:
    dst = tmp_path / "ckpt"
    shutil.copytree(zoo_path("llama-5m"), dst)
    return dst


# ---------------------------------------------------------- checkpoints
def test_pickle_only_checkpoint_is_refused_and_never_unpickled(eng, ckpt, tmp_path):
    marker = tmp_path / "PWNED"
    (ckpt / "model.safetensors").unlink()
    _pickle_bomb(ckpt / "pytorch_model.bin", marker)
    with pytest.raises(LabError, match=r"pytorch_model.bin .*pickle, refused.*accepted: safetensors") as ei:
        eng.load(str(ckpt), id="pickled")
    assert "\n" not in str(ei.value)
    assert not marker.exists()
    assert "pickled" not in [m.id for m in eng.snapshot().models]


def test_pickle_beside_safetensors_is_ignored(eng, ckpt, tmp_path):
    marker = tmp_path / "PWNED"
    _pickle_bomb(ckpt / "pytorch_model.bin", marker)
    mid = eng.load(str(ckpt), id="both")
    try:
        assert not marker.exists(), "pytorch_model.bin was unpickled"
        assert len(eng.generate(mid, [5, 6, 7], max_new_tokens=3).token_ids) == 3
        assert not marker.exists()
    finally:
        eng.unload(mid)


def _remote_code_ckpt(ckpt: Path, marker: Path, model_type: str | None) -> None:
    cfg = json.loads((ckpt / "config.json").read_text())
    cfg["auto_map"] = {"AutoConfig": "evil.EvilConfig", "AutoModelForCausalLM": "evil.EvilForCausalLM"}
    if model_type:
        cfg["model_type"] = model_type
    (ckpt / "config.json").write_text(json.dumps(cfg))
    (ckpt / "evil.py").write_text(f"import os\nos.mkdir({str(marker)!r})\nraise SystemExit('remote code ran')\n")


@pytest.mark.parametrize("model_type", ["evil", None])  # unknown type; known type (llama) + auto_map
def test_remote_code_never_runs_without_trust(eng, ckpt, tmp_path, model_type):
    marker = tmp_path / "PWNED"
    _remote_code_ckpt(ckpt, marker, model_type)
    if model_type == "evil":
        with pytest.raises(LabError, match="trust_remote_code") as ei:
            eng.load(str(ckpt), id="remote")
        assert "\n" not in str(ei.value)
    else:  # a built-in architecture: transformers' own class is used, auto_map ignored
        mid = eng.load(str(ckpt), id="remote")
        eng.unload(mid)
    assert not marker.exists(), "custom modeling code was executed without trust_remote_code"


def test_trust_remote_code_reaches_from_pretrained_only_when_set(eng, monkeypatch):
    import transformers

    seen: list[tuple[str, dict]] = []
    for cls in (transformers.AutoModelForCausalLM, transformers.AutoTokenizer, transformers.AutoConfig):
        real = cls.from_pretrained

        def spy(*a, _real=real, _name=cls.__name__, **kw):
            seen.append((_name, dict(kw)))
            return _real(*a, **kw)

        monkeypatch.setattr(cls, "from_pretrained", spy)
    for trust in (False, True):
        seen.clear()
        mid = eng.load("zoo:llama-5m", id=f"t{int(trust)}", trust_remote_code=trust)
        eng.unload(mid)
        models = [kw for name, kw in seen if name == "AutoModelForCausalLM"]
        assert models, "the model did not load through AutoModelForCausalLM.from_pretrained"
        for name, kw in seen:
            assert kw.get("trust_remote_code", False) is trust, (name, kw)
        assert all(kw.get("use_safetensors") is True for kw in models)


# -------------------------------------------------------------- scenarios
NASTY = [
    "__import__('os').mkdir('{m}')",
    "{{eval(\"__import__('os').mkdir('{m}')\")}}",
    "$(mkdir {m})",
    "`mkdir {m}`",
    "!!python/object/apply:os.mkdir ['{m}']",
    "${{{{ mkdir {m} }}}}",
]


@pytest.mark.parametrize("nasty", NASTY)
def test_scenario_strings_are_data(tmp_path, monkeypatch, nasty):
    from labtui.scenario.recorder import scenario_to_toml
    from labtui.scenario.schema import load_scenario

    monkeypatch.chdir(tmp_path)
    marker = tmp_path / "PWNED"
    text = nasty.format(m=marker)
    f = tmp_path / "nasty.toml"
    f.write_text(
        "[lab]\n"
        f"name = {json.dumps(text)}\n"
        f"description = {json.dumps(text)}\n"
        '[[models]]\nid = "a"\nsource = "zoo:llama-5m"\n'
        f'[[timeline]]\nat = 0\naction = "note"\ntext = {json.dumps(text)}\n'
    )
    scn = load_scenario(f)
    assert scn.lab.description == text and scn.timeline[0].text == text
    scenario_to_toml(scn)  # written back as data too
    # in a source, the same string is only ever a (refused) name, never run
    bad = tmp_path / "bad.toml"
    bad.write_text(f'[[models]]\nid = "a"\nsource = {json.dumps(text)}\n')
    with pytest.raises(LabError):
        load_scenario(bad)
    assert not marker.exists()


def test_scenario_must_be_toml(tmp_path):
    from labtui.scenario.schema import load_scenario

    marker = tmp_path / "PWNED"
    for name, body in {
        "s.py": f"import os\nos.mkdir({str(marker)!r})\n",
        "s.yaml": f"models: !!python/object/apply:os.mkdir ['{marker}']\n",
        "s.json": json.dumps({"models": [{"id": "a", "source": "zoo:llama-5m"}], "x": {"__class__": "os.system"}}),
    }.items():
        f = tmp_path / name
        f.write_text(body)
        with pytest.raises(LabError) as ei:
            load_scenario(f)
        assert "\n" not in str(ei.value)
    assert not marker.exists()


def _calls_and_imports(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            fn = node.func
            if isinstance(fn, ast.Name):
                yield "call", fn.id
            elif isinstance(fn, ast.Attribute) and isinstance(fn.value, ast.Name):
                yield "call", f"{fn.value.id}.{fn.attr}"
        elif isinstance(node, ast.Import):
            for a in node.names:
                yield "import", a.name
        elif isinstance(node, ast.ImportFrom):
            yield "import", node.module or ""


def test_package_has_no_code_execution_paths():
    """No eval/exec/compile, no pickle-family or yaml loading, no torch.load (pickle)
    anywhere in labtui/: what the lab reads stays data."""
    banned_calls = {"eval", "exec", "compile", "__import__", "torch.load", "yaml.load", "yaml.unsafe_load",
                    "pickle.load", "pickle.loads", "marshal.loads", "os.system", "subprocess.Popen"}
    banned_imports = {"pickle", "cPickle", "dill", "marshal", "shelve", "yaml", "joblib"}
    found = []
    for f in sorted(PKG.rglob("*.py")):
        for kind, name in _calls_and_imports(ast.parse(f.read_text(), str(f))):
            if (kind == "call" and name in banned_calls) or (kind == "import" and name.split(".")[0] in banned_imports):
                found.append(f"{f.relative_to(PKG.parent)}: {kind} {name}")
    assert not found, found


def test_relative_paths_resolve_against_the_scenario_file(zoo_path, tmp_path, monkeypatch):
    from labtui.scenario.schema import load_scenario

    here = tmp_path / "scenarios" / "mine"
    here.mkdir(parents=True)
    shutil.copytree(zoo_path("llama-5m"), here / "ckpt")
    body = '[[models]]\nid = "a"\nsource = "./ckpt"\n'
    (here / "s.toml").write_text(body)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    scn = load_scenario(here / "s.toml")
    assert Path(scn.models[0].source) == (here / "ckpt").resolve()
    # a folder of that name in the cwd is never picked: only the file's folder counts
    lone = tmp_path / "lone"
    lone.mkdir()
    (lone / "s.toml").write_text(body)
    shutil.copytree(here / "ckpt", elsewhere / "ckpt")
    with pytest.raises(LabError, match="not found") as ei:
        load_scenario(lone / "s.toml")
    assert str((lone / "ckpt").resolve()) in str(ei.value)


# ---------------------------------------------------------------- network
def _inet_sockets() -> list:
    p = psutil.Process()
    conns = p.net_connections(kind="inet") if hasattr(p, "net_connections") else p.connections(kind="inet")
    return list(conns)


def test_engine_opens_no_port(eng):
    before = {(c.laddr, c.status) for c in _inet_sockets()}
    mid = eng.load("zoo:llama-5m", id="net")
    try:
        eng.generate(mid, "is anybody listening", max_new_tokens=4)
        eng.launch_workload(mid, requests=2, prompt_tokens=4, max_new_tokens=2)
        assert eng.wait_idle(30)
        new = [c for c in _inet_sockets() if (c.laddr, c.status) not in before]
        assert not [c for c in new if c.status == psutil.CONN_LISTEN], new
        assert not new, f"the engine opened sockets: {new}"
    finally:
        eng.unload(mid)


def test_lab_app_opens_no_port(eng):
    from labtui.tui.app import LabApp

    mid = eng.load("zoo:llama-5m", id="tui")
    before = {(c.laddr, c.status) for c in _inet_sockets()}

    async def drive():
        app = LabApp(eng)
        async with app.run_test(size=(100, 30)) as pilot:
            await pilot.pause(1.0)
            await pilot.press("tab")
            await pilot.pause(0.5)
            return [c for c in _inet_sockets() if (c.laddr, c.status) not in before]

    try:
        new = asyncio.run(drive())
        assert not [c for c in new if c.status == psutil.CONN_LISTEN], new
        assert not new, f"the lab opened sockets: {new}"
    finally:
        eng.unload(mid)
