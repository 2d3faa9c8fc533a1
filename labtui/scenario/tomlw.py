"""A small TOML writer for scenario files.

Why our own: the stdlib has ``tomllib`` for reading but no writer, and scenario
files only need a small, predictable subset (tables, arrays of tables, scalars,
lists, inline tables), written in a fixed order so diffs of recorded sessions stay
readable. tests/test_recorder.py round-trips it through tomllib.
"""

from __future__ import annotations

import math
import re
from typing import Any

_BARE = re.compile(r"[A-Za-z0-9_\-]+")  # fullmatch: "$" would accept a trailing newline


def dumps(doc: dict[str, Any], header: str = "") -> str:
    """TOML text for `doc`: top-level scalars, then tables, then arrays of tables.
    None values are left out (TOML has no null)."""
    out: list[str] = [f"# {line}".rstrip() for line in header.splitlines()]
    if out:
        out.append("")
    scalars = {k: v for k, v in doc.items() if not _is_table(v) and not _is_table_array(v)}
    _body(out, scalars)
    for k, v in doc.items():
        if _is_table(v):
            _table(out, [k], v)
    for k, v in doc.items():
        if _is_table_array(v):
            for item in v:
                if out and out[-1] != "":
                    out.append("")
                out.append(f"[[{_key(k)}]]")
                _body(out, item)
    return "\n".join(out).strip("\n") + "\n"


def _table(out: list[str], path: list[str], t: dict) -> None:
    if out and out[-1] != "":
        out.append("")
    out.append(f"[{'.'.join(_key(p) for p in path)}]")
    _body(out, {k: v for k, v in t.items() if not _is_table(v)})
    for k, v in t.items():
        if _is_table(v):
            _table(out, [*path, k], v)


def _body(out: list[str], t: dict) -> None:
    for k, v in t.items():
        if v is not None:
            out.append(f"{_key(k)} = {value(v)}")


def _is_table(v: Any) -> bool:
    return isinstance(v, dict)


def _is_table_array(v: Any) -> bool:
    return isinstance(v, list) and bool(v) and all(isinstance(x, dict) for x in v)


def _key(k: str) -> str:
    return k if _BARE.fullmatch(k) else _string(k)


def _string(s: str) -> str:
    esc = {'"': '\\"', "\\": "\\\\", "\n": "\\n", "\t": "\\t", "\r": "\\r", "\b": "\\b", "\f": "\\f"}
    body = "".join(esc.get(c, c if ord(c) >= 0x20 and c != "\x7f" else f"\\u{ord(c):04x}") for c in s)
    return f'"{body}"'


def value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return repr(v)  # repr round-trips exactly and always has '.' or 'e'
    if isinstance(v, str):
        return _string(v)
    if isinstance(v, list | tuple):
        return "[" + ", ".join(value(x) for x in v) + "]"
    if isinstance(v, dict):
        items = ", ".join(f"{_key(k)} = {value(x)}" for k, x in v.items() if x is not None)
        return "{ " + items + " }" if items else "{}"
    raise TypeError(f"cannot write {type(v).__name__} as TOML")
