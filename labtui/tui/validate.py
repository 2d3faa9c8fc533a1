"""Turn form values into engine commands, or one-line errors (nothing is sent)."""

from __future__ import annotations

from pydantic import ValidationError

from labtui.errors import LabError, one_line


def pydantic_one_line(e: ValidationError) -> str:
    errs = e.errors()
    if not errs:
        return one_line(str(e))
    err = errs[0]
    loc = ".".join(str(x) for x in err.get("loc", ()) if x != "__root__")
    msg = err.get("msg", "invalid value").removeprefix("Value error, ")
    return one_line(f"{loc}: {msg}" if loc else msg)


def build(cls, **fields):
    """``cls(**fields)`` with empty form fields dropped; LabError with one line if invalid."""
    clean = {k: v for k, v in fields.items() if v is not None and v != ""}
    try:
        return cls(**clean)
    except ValidationError as e:
        raise LabError(pydantic_one_line(e)) from None


def parse_int(name: str, text: str) -> int | None:
    text = text.strip()
    if not text:
        return None
    try:
        return int(text)
    except ValueError:
        raise LabError(f"{name}: expected a whole number, got {text!r}") from None


def parse_float(name: str, text: str) -> float | None:
    text = text.strip()
    if not text:
        return None
    try:
        return float(text)
    except ValueError:
        raise LabError(f"{name}: expected a number, got {text!r}") from None
