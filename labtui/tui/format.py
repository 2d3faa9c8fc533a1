"""Small, pure formatting helpers shared by the lab's widgets (no Textual imports)."""

from __future__ import annotations

import unicodedata

GIB = 1024**3
MIB = 1024**2


def fmt_bytes(n: float, digits: int = 1) -> str:
    """1536 -> '1.5 KiB'; always binary units, as the memory panel's budget is in GiB."""
    n = float(n)
    sign = "-" if n < 0 else ""
    n = abs(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            if unit == "B":
                return f"{sign}{int(n)} B"
            return f"{sign}{n:.{digits}f} {unit}"
        n /= 1024
    return f"{sign}{n:.{digits}f} TiB"  # pragma: no cover


def fmt_gib(n: float, digits: int = 2) -> str:
    return f"{n / GIB:.{digits}f}"


def fmt_s(s: float | None) -> str:
    """Seconds as a short human duration: 0.0042 -> '4.2 ms', 12.3 -> '12.3 s'."""
    if s is None:
        return "–"
    if s < 0.001:
        return f"{s * 1e6:.0f} µs"
    if s < 1.0:
        return f"{s * 1e3:.1f} ms" if s < 0.1 else f"{s * 1e3:.0f} ms"
    if s < 100:
        return f"{s:.2f} s"
    return f"{s:.0f} s"


def fmt_params(n: int) -> str:
    if n >= 1e9:
        return f"{n / 1e9:.1f}B"
    if n >= 1e6:
        return f"{n / 1e6:.1f}M"
    if n >= 1e3:
        return f"{n / 1e3:.0f}K"
    return str(n)


def fmt_rate(x: float) -> str:
    if x >= 1000:
        return f"{x:,.0f}"
    if x >= 100:
        return f"{x:.0f}"
    return f"{x:.1f}"


def ellipsize(text: str, width: int) -> str:
    """Cut ``text`` to ``width`` cells, marking the cut with '…' (never silently)."""
    if width <= 0:
        return ""
    if len(text) <= width:
        return text
    if width == 1:
        return "…"
    return text[: width - 1] + "…"


def one_line_text(text: str) -> str:
    """Generated text for one line: whitespace runs become one space, and control or
    unassigned characters (tiny models emit them) become '�', so they can neither
    drive the terminal nor break an SVG screenshot."""
    text = " ".join(text.split())
    return "".join("\ufffd" if unicodedata.category(ch)[0] == "C" else ch for ch in text)


def device_line(dev) -> str:
    """The always-visible device description, e.g.
    'sim (simulated accelerator) · 4.0 GiB budget · link pcie4-x16 25 GB/s'."""
    if dev.simulated:
        budget = f"{dev.budget_bytes / GIB:.1f} GiB budget"
        link = dev.link
        gbps = f"{dev.link_gbps:g} GB/s"
        link_s = f"link {link} {gbps}" if gbps not in link else f"link {link}"
        return f"{dev.kind} (simulated accelerator) · {budget} · {link_s}"
    total = dev.budget_bytes or dev.total_bytes
    return f"{dev.kind} {dev.name} · {total / GIB:.1f} GiB · link {dev.link}"
