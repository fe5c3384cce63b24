"""Tiny inline-SVG helpers for the verification report: pure string builders, fixed
decimals (byte-identical markup), text HTML-escaped here.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from html import escape

BLUE = (33, 102, 172)  # negative end of the diverging scale
RED = (178, 24, 43)  # positive end
GREY = "#c8c8c8"  # undefined / not released
RELEASED = "#1f4e79"
SYNTHETIC = "#d95f02"
FONT = 'font-family="sans-serif"'


# ---------------------------------------------------------------- primitives


def num(x: float) -> str:
    """A coordinate with two decimals (never "-0.00")."""
    s = f"{x:.2f}"
    return "0.00" if s == "-0.00" else s


def finite(x: object) -> bool:
    """True for a real, finite number (None, NaN and inf are not)."""
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def tick_label(v: float) -> str:
    """Default axis label: whole numbers with thousands separators, else four significant digits."""
    if float(v).is_integer() and abs(v) < 1e9:
        return f"{int(v):,}"
    s = f"{v:.4g}"
    return "0" if s == "-0" else s


def svg(width: float, height: float, body: str, label: str, max_width: float | None = None) -> str:
    """Wrap `body` in a scalable <svg> element with an accessible label."""
    style = f' style="max-width:{num(max_width)}px"' if max_width else ""
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" viewBox="0 0 {num(width)} {num(height)}"'
        f' role="img" aria-label="{escape(label)}"{style}>{body}</svg>'
    )


def text(
    x: float,
    y: float,
    s: str,
    size: float = 10,
    anchor: str = "start",
    fill: str = "#333",
    rotate: float | None = None,
    title: str | None = None,
) -> str:
    """A text element; `rotate` turns it about its anchor point."""
    rot = f' transform="rotate({num(rotate)} {num(x)} {num(y)})"' if rotate is not None else ""
    tip = f"<title>{escape(title)}</title>" if title else ""
    return (
        f'<text x="{num(x)}" y="{num(y)}" font-size="{num(size)}" {FONT} text-anchor="{anchor}"'
        f' fill="{fill}"{rot}>{tip}{escape(s)}</text>'
    )


def line(
    x1: float,
    y1: float,
    x2: float,
    y2: float,
    stroke: str = "#999",
    width: float = 1,
    dash: str | None = None,
) -> str:
    """A straight line, optionally dashed."""
    d = f' stroke-dasharray="{dash}"' if dash else ""
    return (
        f'<line x1="{num(x1)}" y1="{num(y1)}" x2="{num(x2)}" y2="{num(y2)}" stroke="{stroke}"'
        f' stroke-width="{num(width)}"{d}/>'
    )


def rect(
    x: float,
    y: float,
    w: float,
    h: float,
    fill: str,
    title: str | None = None,
    stroke: str | None = None,
) -> str:
    """A filled rectangle with an optional tooltip."""
    s = f' stroke="{stroke}" stroke-width="0.5"' if stroke else ""
    if title:
        return (
            f'<rect x="{num(x)}" y="{num(y)}" width="{num(max(w, 0))}" height="{num(max(h, 0))}"'
            f' fill="{fill}"{s}><title>{escape(title)}</title></rect>'
        )
    return f'<rect x="{num(x)}" y="{num(y)}" width="{num(max(w, 0))}" height="{num(max(h, 0))}" fill="{fill}"{s}/>'


def circle(x: float, y: float, r: float, fill: str) -> str:
    """A filled dot."""
    return f'<circle cx="{num(x)}" cy="{num(y)}" r="{num(r)}" fill="{fill}"/>'


def polyline(points: Sequence[tuple[float, float]], stroke: str, width: float = 1.5) -> str:
    """An open polyline through `points`."""
    pts = " ".join(f"{num(x)},{num(y)}" for x, y in points)
    return f'<polyline points="{pts}" fill="none" stroke="{stroke}" stroke-width="{num(width)}"/>'


def truncate(s: str, n: int) -> str:
    """Shorten `s` to at most `n` characters, marking the cut with an ellipsis."""
    return s if len(s) <= n else s[: max(n - 1, 1)] + "…"


def nice_ticks(lo: float, hi: float, n: int = 4) -> list[float]:
    """Round tick values (steps of 1, 2 or 5 × 10^k) covering [lo, hi]."""
    if not (math.isfinite(lo) and math.isfinite(hi)) or hi <= lo:
        return [lo] if math.isfinite(lo) else []
    raw = (hi - lo) / max(n, 1)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 5, 10) if m * mag >= raw)
    first = math.ceil(lo / step - 1e-9)
    ticks = []
    k = first
    while k * step <= hi + step * 1e-9:
        v = k * step
        ticks.append(0.0 if abs(v) < step * 1e-9 else round(v, 12))
        k += 1
    return ticks


def diverging(v: float | None, clamp: float) -> str:
    """Blue (negative) – white (0) – red (positive) colour, saturated at ±clamp; grey when undefined."""
    if not finite(v):
        return GREY
    t = min(abs(float(v)) / clamp, 1.0)
    end = RED if v > 0 else BLUE
    r, g, b = (round(255 + (e - 255) * t) for e in end)
    return f"#{r:02x}{g:02x}{b:02x}"


# ---------------------------------------------------------------- charts


def quantile_chart(
    released: Sequence[float],
    synthetic: Sequence[float] | None,
    label: str,
    fmt: Callable[[float], str] = tick_label,
) -> str:
    """Released quantile function (line) against synthetic percentiles (dots), x = percentile 0..100."""
    W, H, L, R, T, B = 320.0, 200.0, 56.0, 10.0, 10.0, 30.0
    rel = [
        (i * 100 / (len(released) - 1) if len(released) > 1 else 0.0, v)
        for i, v in enumerate(released)
    ]
    rel = [(p, float(v)) for p, v in rel if finite(v)]
    syn = [(float(i), float(v)) for i, v in enumerate(synthetic or []) if finite(v)]
    ys = [v for _, v in rel] + [v for _, v in syn]
    if not ys:
        return svg(W, H, text(W / 2, H / 2, "no values", anchor="middle"), label)
    lo, hi = min(ys), max(ys)
    pad = (hi - lo) * 0.04 if hi > lo else (abs(lo) * 0.05 or 0.5)
    lo, hi = lo - pad, hi + pad
    sx = lambda p: L + (W - L - R) * p / 100.0  # noqa: E731
    sy = lambda v: T + (H - T - B) * (1 - (v - lo) / (hi - lo))  # noqa: E731
    parts = [rect(L, T, W - L - R, H - T - B, "#fafafa", stroke="#ddd")]
    for p in (0, 25, 50, 75, 100):
        parts.append(line(sx(p), H - B, sx(p), H - B + 3, "#666"))
        parts.append(text(sx(p), H - B + 13, str(p), 9, "middle"))
    parts.append(text(L + (W - L - R) / 2, H - 3, "percentile", 9, "middle", "#666"))
    for v in nice_ticks(lo, hi, 4):
        parts.append(line(L, sy(v), W - R, sy(v), "#e6e6e6"))
        parts.append(text(L - 4, sy(v) + 3, fmt(v), 9, "end"))
    if rel:
        parts.append(polyline([(sx(p), sy(v)) for p, v in rel], RELEASED, 1.8))
    parts.extend(circle(sx(p), sy(v), 1.6, SYNTHETIC) for p, v in syn)
    parts.append(line(L + 6, T + 10, L + 20, T + 10, RELEASED, 1.8))
    parts.append(text(L + 24, T + 13, "released", 9))
    parts.append(circle(L + 13, T + 23, 2.2, SYNTHETIC))
    parts.append(text(L + 24, T + 26, "synthetic", 9))
    return svg(W, H, "".join(parts), label)


def share_bars(
    levels: Sequence[str],
    released: Sequence[float],
    synthetic: Sequence[float | None],
    label: str,
    titles: Sequence[str] | None = None,
) -> str:
    """Paired horizontal bars per level: released share (dark) over synthetic share (orange)."""
    W, L, R, T, row = 320.0, 112.0, 44.0, 22.0, 20.0
    H = T + row * max(len(levels), 1) + 18
    top = max([v for v in list(released) + list(synthetic) if finite(v)] + [1e-12])
    sx = lambda v: L + (W - L - R) * v / top  # noqa: E731
    parts = [
        rect(L, 4, 8, 8, RELEASED),
        text(L + 11, 11, "released", 9),
        rect(L + 66, 4, 8, 8, SYNTHETIC),
        text(L + 77, 11, "synthetic", 9),
    ]
    for i, lev in enumerate(levels):
        y = T + i * row
        tip = titles[i] if titles else lev
        parts.append(text(L - 4, y + 11, truncate(lev, 18), 9, "end", title=tip))
        r, s = released[i], synthetic[i]
        if finite(r):
            parts.append(rect(L, y + 1, sx(r) - L, 8, RELEASED, f"{tip}: released {r:.1%}"))
        if finite(s):
            parts.append(rect(L, y + 9, sx(s) - L, 8, SYNTHETIC, f"{tip}: synthetic {s:.1%}"))
        best = max([v for v in (r, s) if finite(v)] + [0.0])
        parts.append(
            text(
                sx(best) + 3,
                y + 12,
                f"{best:.0%}" if best >= 0.01 else f"{best:.1%}",
                8,
                fill="#666",
            )
        )
    parts.append(line(L, T - 2, L, H - 16, "#666"))
    parts.append(text(L + (W - L - R) / 2, H - 4, "share of non-missing", 9, "middle", "#666"))
    return svg(W, H, "".join(parts), label)


def heatmap(
    labels: Sequence[str],
    diff: Sequence[Sequence[float]],
    tooltips: Sequence[Sequence[str]],
    clamp: float,
    label: str,
) -> str:
    """Square heatmap of `diff` on the diverging scale, labels on both axes and a colour legend."""
    k = len(labels)
    cell = max(6.0, min(22.0, 560.0 / max(k, 1)))
    fs = max(5.0, min(10.0, cell * 0.75))
    lab = min(max((len(s) for s in labels), default=4), 24) * fs * 0.62 + 10
    L, T = lab, lab
    size = cell * k
    W, H = L + size + 90, T + max(size, 160.0) + 10
    parts = []
    for i, s in enumerate(labels):
        c = T + (i + 0.5) * cell + fs * 0.35
        parts.append(text(L - 3, c, truncate(s, 24), fs, "end", title=s))
        x = L + (i + 0.5) * cell + fs * 0.35
        parts.append(text(x, T - 3, truncate(s, 24), fs, "start", rotate=-90.0, title=s))
    for i in range(k):
        for j in range(k):
            parts.append(
                rect(
                    L + j * cell,
                    T + i * cell,
                    cell,
                    cell,
                    diverging(diff[i][j], clamp),
                    tooltips[i][j],
                )
            )
    parts.append(rect(L, T, size, size, "none", stroke="#888"))
    # legend: stepped bar from +clamp (top) to -clamp (bottom), plus a grey swatch
    lx, ly, lh, steps = L + size + 16, T, 120.0, 21
    for s in range(steps):
        v = clamp - 2 * clamp * s / (steps - 1)
        parts.append(rect(lx, ly + s * lh / steps, 12, lh / steps + 0.3, diverging(v, clamp)))
    parts.append(rect(lx, ly, 12, lh, "none", stroke="#888"))
    for v, y in ((clamp, ly), (0.0, ly + lh / 2), (-clamp, ly + lh)):
        parts.append(text(lx + 16, y + 3, f"{v:+.2f}" if v else "0", 9))
    parts.append(rect(lx, ly + lh + 10, 12, 12, GREY, stroke="#888"))
    parts.append(text(lx + 16, ly + lh + 20, "n/a", 9))
    return svg(W, H, "".join(parts), label, max_width=W)


def dbeta_chart(
    terms: Sequence[str],
    dbeta_se: Sequence[float | None],
    dbeta_se_target: Sequence[float | None],
    label: str,
    refs: Sequence[float] = (1.0, 2.0, 3.0),
    bound: float = 3.0,
) -> str:
    """Horizontal |Δβ|/SE per term: bar = relative to the synthetic SE, black tick = relative to the
    target SE; dashed reference lines at `refs`. Values past the axis are drawn clipped with ▸."""
    W, L, R, T, row = 560.0, 150.0, 20.0, 26.0, 16.0
    H = T + row * max(len(terms), 1) + 26
    vals = [v for v in list(dbeta_se) + list(dbeta_se_target) if finite(v)]
    xmax = max([max(refs) + 0.5] + [min(v, 12.0) * 1.08 for v in vals])
    sx = lambda v: L + (W - L - R) * min(v, xmax) / xmax  # noqa: E731
    parts = [
        rect(L, 6, 10, 8, RELEASED),
        text(L + 13, 13, "|Δβ| / SE synthetic", 9),
        line(L + 130, 5, L + 130, 15, "#000", 2),
        text(L + 135, 13, "|Δβ| / SE target", 9),
    ]
    for r in refs:
        parts.append(line(sx(r), T - 4, sx(r), H - 22, "#999", 1, "4 3"))
    for t in nice_ticks(0.0, xmax, 6):
        parts.append(text(sx(t), H - 10, tick_label(t), 9, "middle"))
    for i, name in enumerate(terms):
        y = T + i * row
        parts.append(text(L - 4, y + 10, truncate(name, 26), 9, "end", title=name))
        a, b = dbeta_se[i], dbeta_se_target[i]
        if a is not None and not (isinstance(a, float) and math.isnan(a)):
            a = float(a)
            fill = "#b2182b" if a >= bound else RELEASED
            parts.append(
                rect(L, y + 3, sx(a) - L, row - 6, fill, f"{name}: |Δβ|/SE synthetic = {a:.3g}")
            )
            if a > xmax:
                parts.append(text(sx(a) + 1, y + 11, "▸", 9, fill="#b2182b"))
        if b is not None and not (isinstance(b, float) and math.isnan(b)):
            b = float(b)
            parts.append(line(sx(b), y + 1, sx(b), y + row - 1, "#000", 2))
    parts.append(line(L, T - 4, L, H - 22, "#666"))
    parts.append(line(L, H - 22, W - R, H - 22, "#666"))
    return svg(W, H, "".join(parts), label)
