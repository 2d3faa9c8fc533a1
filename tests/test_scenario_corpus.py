"""Every broken scenario gets one readable line and exit code 2, never a traceback.

Each file in tests/broken_scenarios/ starts with `# expect: TEXT`, a piece of the
message it must produce (the field path, or the hint it should give).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from labtui.cli import main
from labtui.scenario.schema import builtin_names

CORPUS = sorted((Path(__file__).parent / "broken_scenarios").glob("*.toml"))


def _expected(f: Path) -> str | None:
    first = f.read_text().splitlines()[:1]
    return first[0].removeprefix("# expect: ") if first and first[0].startswith("# expect: ") else None


def test_corpus_is_large_enough():
    assert len(CORPUS) >= 30


@pytest.mark.parametrize("f", CORPUS, ids=lambda f: f.stem)
def test_broken_scenario_one_line_exit_2(f: Path, capsys):
    rc = main(["run", "--check", str(f)])
    out, err = capsys.readouterr()
    assert rc == 2
    assert out == ""
    lines = err.strip("\n").split("\n")
    assert len(lines) == 1, err
    assert "Traceback" not in err
    assert str(f) in lines[0]  # names the file
    exp = _expected(f)
    if exp is not None:
        assert exp in lines[0]
    else:  # the empty file has no room for an expectation
        assert "empty scenario" in lines[0]


# Problems of the whole file have no line to point at; every other one does.
WHOLE_FILE = {"empty", "only-comments", "no-models"}


@pytest.mark.parametrize("f", [c for c in CORPUS if c.stem not in WHOLE_FILE], ids=lambda f: f.stem)
def test_error_names_the_line(f: Path, capsys):
    main(["run", "--check", str(f)])
    line = capsys.readouterr().err.strip()
    assert line.startswith(f"labtui: {f}:"), line
    assert line.split(":")[2].strip().isdigit(), line


def test_missing_file_and_folder_are_one_line(tmp_path, capsys):
    for ref in (str(tmp_path / "nope.toml"), str(tmp_path), "no-such-builtin"):
        assert main(["run", "--check", ref]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "Traceback" not in err


def test_unknown_builtin_suggests_a_name(capsys):
    assert main(["run", "--check", "ofload-sweep"]) == 2
    assert "did you mean 'offload-sweep'" in capsys.readouterr().err


@pytest.mark.parametrize("name", builtin_names())
def test_builtins_check_ok(name, capsys):
    assert main(["run", "--check", name]) == 0
    out = capsys.readouterr().out
    assert out.startswith("ok: ") and out.count("\n") == 1
