"""report.html: one self-contained page (inline CSS and SVG, no script; a Content-Security-Policy that forbids
fetching anything), with a chart per target of the memory estimate against the budget."""

from __future__ import annotations

import html
import math
import unicodedata
from typing import Any

from packager.labels import provider_name
from packager.report_view import (
    FITS_COLOUR,
    OVER_COLOUR,
    MiB,
    View,
    _clean,
    _component_rows,
    _fit_text,
    _footer_text,
    _num,
    _sentence,
    accuracy_text,
    budget_text,
    component_colour,
    component_label,
    error_text,
    margin_text,
    mixed_text,
    model_size,
    peak_sentence,
    peak_text,
    percent,
    size,
    size_range,
    smoke_text,
    verdict,
    verdict_head,
)


def esc(text: Any, limit: int | None = None) -> str:
    """Text for HTML and SVG: control characters out, markup characters escaped."""
    s = _clean(text)
    if limit is not None and len(s) > limit:
        s = s[: limit - 1] + "…"
    return html.escape(s, quote=True)


def _text_width(text: str, font_size: float) -> float:
    """A generous estimate of rendered width in a sans-serif font (wide characters count double)."""
    wide = sum(1 for c in text if unicodedata.east_asian_width(c) in "WF")
    return (len(text) + wide) * font_size * 0.6


def _contrast_text(colour: str) -> str:
    r, g, b = (int(colour[i:i + 2], 16) / 255 for i in (1, 3, 5))
    lum = sum(w * (c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4)
              for w, c in zip((0.2126, 0.7152, 0.0722), (r, g, b)))
    return "#000" if (lum + 0.05) / 0.05 >= 1.05 / (lum + 0.05) else "#fff"


def _ticks(top_mib: float) -> tuple[float, list[float]]:
    raw = top_mib / 6
    mag = 10 ** math.floor(math.log10(raw)) if raw > 0 else 1
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    return step, [i * step for i in range(int(top_mib / step) + 1)]


def _tick_label(value: float, step: float) -> str:
    return f"{value:.0f}" if step >= 1 else f"{value:.{max(0, -math.floor(math.log10(step)))}f}"


W, LEFT, RIGHT = 960, 16, 72


PW = W - LEFT - RIGHT


FONT = "system-ui, -apple-system, 'Segoe UI', 'DejaVu Sans', sans-serif"


def chart(v: View, index: int) -> str:
    """One target's memory as SVG: the verdict in words; the estimate's components stacked on a
    gauge that ends at the budget line, the peak marked and the headroom spelled out; then the
    same components to their own scale, each named."""
    if not v.has_memory:
        return ""
    assert v.peak is not None and v.budget is not None
    phase, included, excluded = v.phase()
    parts = [(k, v.breakdown[k]) for k in included if v.breakdown[k] > 0]
    stacked = sum(b for _, b in parts)
    top = max(v.budget, v.peak, stacked, 1) * 1.08

    def x(b: float) -> float:
        return LEFT + PW * b / top

    colour = FITS_COLOUR if v.fits else OVER_COLOUR
    title_id = f"chart-{index}-title"
    head = f"{'✓' if v.fits else '✗'} {verdict_head(v).capitalize()}, {margin_text(v)}"
    svg = [f'<svg class="chart" viewBox="0 0 {W} HEIGHT" width="{W}" height="HEIGHT" role="img" '
           f'aria-labelledby="{title_id}" xmlns="http://www.w3.org/2000/svg" font-family="{FONT}">',
           f'<title id="{title_id}">{esc(v.target)}: {esc(verdict(v))}</title>',
           f'<rect width="{W}" height="HEIGHT" fill="#fff"/>',
           f'<text x="{LEFT}" y="24" font-size="19" font-weight="700" fill="{colour}">{esc(head)}</text>',
           f'<text x="{LEFT}" y="46" font-size="14" fill="#333">{esc(_sentence(peak_sentence(v)), 130)}</text>']

    # The gauge: a track up to the budget, a red tint past it, the stacked estimate on top.
    bar_y, bar_h = 112, 32
    bx = x(v.budget)
    svg += [f'<rect x="{LEFT}" y="{bar_y}" width="{bx - LEFT:.1f}" height="{bar_h}" fill="#eef1f4"/>',
            f'<rect x="{bx:.1f}" y="{bar_y}" width="{LEFT + PW - bx:.1f}" height="{bar_h}" fill="#fbe3e4"/>']
    pos = 0.0
    for key, b in parts:
        svg.append(f'<rect x="{x(pos):.2f}" y="{bar_y}" width="{max(PW * b / top, 0.6):.2f}" height="{bar_h}" '
                   f'fill="{component_colour(key)}"><title>{esc(component_label(key, v))}: {esc(size(b))}</title>'
                   '</rect>')
        pos += b
    pos = 0.0
    for _key, b in parts[:-1]:  # white gaps between segments
        pos += b
        svg.append(f'<line x1="{x(pos):.2f}" x2="{x(pos):.2f}" y1="{bar_y}" y2="{bar_y + bar_h}" stroke="#fff"/>')

    # Budget line and label on one row, the peak marker and its label on the next: no collisions.
    hy = bar_y + bar_h + 20
    svg += [f'<line x1="{bx:.1f}" x2="{bx:.1f}" y1="{66}" y2="{hy + 14}" stroke="#222" stroke-width="2" '
            'stroke-dasharray="6 3"/>',
            _label(bx, 76, f"budget {budget_text(v.budget)}", 13, weight="600")]
    px = x(v.peak)
    svg += [_label(px, 96, f"{v.peak_word} {size(v.peak)}", 13, weight="600"),
            f'<path d="M{px - 6:.1f},{bar_y - 10} L{px + 6:.1f},{bar_y - 10} L{px:.1f},{bar_y - 1} Z" fill="#111"/>',
            f'<line x1="{px:.1f}" x2="{px:.1f}" y1="{bar_y - 2}" y2="{bar_y + bar_h + 4}" stroke="#111" '
            'stroke-width="2.5"/>']

    # Headroom (or the overshoot) between the peak and the budget: an arrow with its size on it.
    text = margin_text(v)
    tw = _text_width(text, 13)
    lo, hi = sorted((px, bx))
    if hi - lo > tw + 40:
        mid = (lo + hi) / 2
        svg += [f'<line x1="{lo + 2:.1f}" x2="{mid - tw / 2 - 8:.1f}" y1="{hy}" y2="{hy}" stroke="{colour}" '
                'stroke-width="1.5"/>',
                f'<line x1="{mid + tw / 2 + 8:.1f}" x2="{hi - 2:.1f}" y1="{hy}" y2="{hy}" stroke="{colour}" '
                'stroke-width="1.5"/>',
                f'<path d="M{lo + 2:.1f},{hy} l8,-4.5 v9 Z" fill="{colour}"/>',
                f'<path d="M{hi - 2:.1f},{hy} l-8,-4.5 v9 Z" fill="{colour}"/>',
                f'<text x="{mid:.1f}" y="{hy + 4.5}" font-size="13" text-anchor="middle" fill="{colour}" '
                f'font-weight="600">{esc(text)}</text>']
    else:  # too narrow for the words: a bracket, and the words beside it where there is room
        svg.append(f'<line x1="{lo:.1f}" x2="{hi:.1f}" y1="{hy}" y2="{hy}" stroke="{colour}" stroke-width="3"/>')
        left_side = lo - LEFT > tw + 10
        svg.append(f'<text x="{(lo - 8 if left_side else hi + 8):.1f}" y="{hy + 4.5}" font-size="13" '
                   f'text-anchor="{"end" if left_side else "start"}" fill="{colour}" font-weight="600">'
                   f'{esc(text)}</text>')

    # The axis.
    ay = hy + 18
    step, ticks = _ticks(top / MiB)
    svg.append(f'<line x1="{LEFT}" x2="{LEFT + PW}" y1="{ay}" y2="{ay}" stroke="#666"/>')
    for i, t in enumerate(ticks):
        tx = x(t * MiB)
        label = _tick_label(t, step) + (" MiB" if i == len(ticks) - 1 else "")
        svg += [f'<line x1="{tx:.1f}" x2="{tx:.1f}" y1="{ay}" y2="{ay + 5}" stroke="#666"/>',
                f'<text x="{tx:.1f}" y="{ay + 19}" font-size="12" fill="#444" text-anchor="middle">{esc(label)}</text>']

    # The same components to their own scale: names inside where they fit, a legend for all.
    cy = ay + 56
    low, high = _num(v.estimate.get("low_bytes")), _num(v.estimate.get("high_bytes"))
    caption = (f"What the estimate is made of: {phase} phase, {size(stacked)} expected "
               f"(range {size_range(low, high)})")
    svg.append(f'<text x="{LEFT}" y="{cy}" font-size="14" font-weight="600" fill="#222">{esc(caption)}</text>')
    cbar_y = cy + 10
    pos = 0.0
    for key, b in parts:
        w = PW * b / stacked
        cx = LEFT + PW * pos / stacked
        fill = component_colour(key)
        svg.append(f'<rect x="{cx:.2f}" y="{cbar_y}" width="{max(w, 0.6):.2f}" height="28" fill="{fill}">'
                   f'<title>{esc(component_label(key, v))}: {esc(size(b))}</title></rect>')
        for candidate in (f"{component_label(key, v)} {size(b)}", size(b)):
            if _text_width(candidate, 12) + 10 <= w:
                svg.append(f'<text x="{cx + w / 2:.1f}" y="{cbar_y + 18.5}" font-size="12" text-anchor="middle" '
                           f'fill="{_contrast_text(fill)}">{esc(candidate)}</text>')
                break
        pos += b
    pos = 0.0
    for _key, b in parts[:-1]:
        pos += b
        gx = LEFT + PW * pos / stacked
        svg.append(f'<line x1="{gx:.2f}" x2="{gx:.2f}" y1="{cbar_y}" y2="{cbar_y + 28}" stroke="#fff" '
                   'stroke-width="1.5"/>')
    ly = cbar_y + 52
    columns = 3
    col_w = PW / columns
    for i, (key, b) in enumerate(parts):
        lx, row_y = LEFT + (i % columns) * col_w, ly + (i // columns) * 22
        svg += [f'<rect x="{lx:.1f}" y="{row_y - 11}" width="13" height="13" fill="{component_colour(key)}" '
                'stroke="#555" stroke-width="0.5"/>',
                f'<text x="{lx + 19:.1f}" y="{row_y}" font-size="13" fill="#222">'
                f'{esc(component_label(key, v), 26)} <tspan font-weight="600">{esc(size(b))}</tspan>'
                f'<tspan fill="#666"> {esc(percent(b, stacked))}</tspan></text>']
    y_end = ly + ((len(parts) + columns - 1) // columns) * 22 - 8
    others = [f"{component_label(k, v)} {size(v.breakdown[k])}" for k in excluded if v.breakdown[k] > 0]
    if others:
        other = "run" if phase == "load" else "load"
        svg.append(f'<text x="{LEFT}" y="{y_end + 14}" font-size="12.5" fill="#555">'
                   f'{esc(f"Not in the bars ({other} phase only, so not part of the peak): " + ", ".join(others), 140)}'
                   '</text>')
        y_end += 22
    for i in (0, 2):  # the height is known now; only the frame's own attributes say HEIGHT
        svg[i] = svg[i].replace("HEIGHT", str(y_end + 6))
    return "\n".join(svg) + "\n</svg>"


def _label(x_pos: float, y: float, text: str, font_size: float, weight: str = "400") -> str:
    """A label for a mark at x_pos, kept inside the chart (left-aligned on the left half, right-aligned
    on the right) on an opaque white ground, so lines behind it never cut through the words."""
    width = _text_width(text, font_size) * (1.05 if weight != "400" else 1.0)
    if x_pos - LEFT < PW / 2 and x_pos - 4 + width <= W - 4:
        anchor, tx, left = "start", max(x_pos - 4, LEFT), max(x_pos - 4, LEFT)
    else:
        tx = min(x_pos + 4, W - 4)
        anchor, left = "end", tx - width
    return (f'<rect x="{left - 3:.1f}" y="{y - font_size:.1f}" width="{width + 6:.1f}" height="{font_size + 5:.1f}" '
            f'fill="#fff"/><text x="{tx:.1f}" y="{y}" font-size="{font_size}" font-weight="{weight}" '
            f'text-anchor="{anchor}" fill="#111">{esc(text)}</text>')


CSS = """
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", "DejaVu Sans", sans-serif; color: #1f2328;
       margin: 24px auto; max-width: 1000px; padding: 0 16px; background: #fff; }
h1 { font-size: 24px; margin: 0 0 4px; }
h2 { font-size: 19px; margin: 36px 0 6px; padding-top: 12px; border-top: 1px solid #d0d7de; }
h3 { font-size: 14px; margin: 14px 0 4px; color: #444; text-transform: uppercase; letter-spacing: .04em; }
table { border-collapse: collapse; margin: 6px 0 12px; font-size: 14px; }
th, td { border-bottom: 1px solid #e4e7eb; padding: 4px 10px; text-align: left; vertical-align: top;
         overflow-wrap: break-word; }
th { background: #f6f8fa; font-weight: 600; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
.fits { color: #1a7f37; font-weight: 600; } .over { color: #c0262d; font-weight: 600; }
.muted { color: #57606a; font-size: 13px; }
.grid { display: flex; flex-wrap: wrap; gap: 0 32px; }
.chart { max-width: 100%; height: auto; display: block; margin: 8px 0; }
.bar { display: inline-block; height: 10px; background: #0072b2; vertical-align: middle; }
code { overflow-wrap: anywhere; }
"""


def html_page(report: dict[str, Any]) -> str:
    views = [View(r) for r in report["results"]]
    out = ['<!DOCTYPE html>', '<html lang="en">', '<head>', '<meta charset="utf-8">',
           # Nothing is fetched: no scripts, images, fonts or styles from anywhere.
           '<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; style-src \'unsafe-inline\'">',
           '<meta name="viewport" content="width=device-width, initial-scale=1">',
           f'<title>packager report: {esc(", ".join(v.target for v in views) or "no results", 200)}</title>',
           f'<style>{CSS}</style>', '</head>', '<body>', '<h1>packager report</h1>',
           f'<p class="muted">{esc(_footer_text(report))}</p>']
    if not views:
        out.append("<p>No results.</p>")
    else:
        out += _html_summary(views)
    for i, v in enumerate(views, 1):
        out += _html_section(v, i)
    out += ['</body>', '</html>']
    return "\n".join(out) + "\n"


def _cell(text: Any, cls: str = "") -> str:
    attribute = f' class="{cls}"' if cls else ""
    return f"<td{attribute}>{esc(text)}</td>"


def _verdict_cell(v: View) -> str:
    if v.error is not None:
        return f'<td class="over">✗ {esc(error_text(v))}</td>'
    if not v.has_memory:
        return _cell("no memory figures")
    return (f'<td class="{"fits" if v.fits else "over"}">{"✓" if v.fits else "✗"} {esc(verdict_head(v))}, '
            f'{esc(margin_text(v))}</td>')


def _html_summary(views: list[View]) -> list[str]:
    out = ['<table>', '<tr><th>target</th><th>bundle</th><th>recipe</th><th class="num">model size</th>'
           '<th>accuracy</th><th class="num">peak of budget</th><th>verdict</th><th>smoke</th></tr>']
    for i, v in enumerate(views, 1):
        target = f'<td><a href="#result-{i}">{esc(v.target)}</a></td>'
        if v.error is not None:
            out.append(f'<tr>{target}{_cell(v.bundle)}{_cell(v.recipe)}<td></td><td></td><td></td>{_verdict_cell(v)}'
                       '<td></td></tr>')
            continue
        smoke_cls = "" if v.smoke is None else "fits" if v.smoke.get("verdict") == "PASS" else "over"
        out.append(f'<tr>{target}{_cell(v.bundle)}{_cell(v.recipe)}{_cell(model_size(v), "num")}'
                   f'{_cell(accuracy_text(v))}{_cell(peak_text(v), "num")}{_verdict_cell(v)}'
                   f'{_cell(smoke_text(v), smoke_cls)}</tr>')
    return out + ['</table>']


def _kv_table(rows: list[tuple[str, str]], num: bool = True) -> str:
    body = "".join(f'<tr><th>{esc(k)}</th>{_cell(val, "num" if num else "")}</tr>' for k, val in rows)
    return f"<table>{body}</table>"


def _html_section(v: View, i: int) -> list[str]:
    out = [f'<section id="result-{i}">',
           f'<h2>{esc(v.target)} <span class="muted">{esc(v.bundle)} · {esc(v.recipe)}</span></h2>']
    if v.error is not None:
        return out + [f'<p class="over">{esc(error_text(v))}</p>', '</section>']
    out.append(chart(v, i) or '<p class="muted">No memory figures in this result.</p>')
    blocks = []
    # accuracy
    a = v.accuracy
    rows: list[tuple[str, str]] = [("summary", accuracy_text(v))]
    for key in ("metric", "reference", "samples", "min_cosine", "max_abs_diff", "token_agreement",
                "min_token_agreement", "min_logits_cosine", "mean_logits_cosine", "identical_generations",
                "generated_tokens"):
        if key in a and not isinstance(a[key], (dict, list)):
            val = a[key]
            rows.append((key.replace("_", " "), f"{val:.6g}" if isinstance(val, float) else str(val)))
    blocks.append("<div><h3>Accuracy</h3>" + _kv_table(rows, num=False) + "</div>")
    # sizes and smoke
    rows = [("model", model_size(v)), ("archive", size(_num(v.sizes.get("archive_bytes"))))]
    smoke = [("smoke test", smoke_text(v))]
    if v.smoke and isinstance(v.smoke.get("report"), dict):
        rep = v.smoke["report"]
        if _num(rep.get("peak_bytes")) is not None:
            smoke.append(("smoke peak", size(rep["peak_bytes"])))
        if rep.get("missing_providers"):
            smoke.append(("not exercised", ", ".join(provider_name(str(p)) for p in rep["missing_providers"])))
    blocks.append("<div><h3>Sizes</h3>" + _kv_table(rows) + "<h3>Smoke</h3>" + _kv_table(smoke, num=False) + "</div>")
    # memory figures
    if v.breakdown:
        phase, included, _ = v.phase()
        mem_rows = [(component_label(k, v) + ("" if k in included else " *"), size(b))
                    for k, b in v.breakdown.items() if b > 0]
        mem_rows.append((f"estimate ({phase} phase)", size_range(_num(v.estimate.get("low_bytes")),
                                                                 _num(v.estimate.get("high_bytes")))))
        if v.measured is not None:
            mem_rows += [("measured peak", size(v.measured)),
                         ("  at load / at run", f"{size(_num(v.memory.get('load_peak_bytes')))} / "
                                                f"{size(_num(v.memory.get('run_peak_bytes')))}")]
        if v.budget is not None:
            mem_rows.append(("budget", budget_text(v.budget)))
        note = "" if all(k in included for k, b in v.breakdown.items() if b > 0) else \
            f'<p class="muted">* {"run" if phase == "load" else "load"} phase only: not part of the peak.</p>'
        blocks.append("<div><h3>Memory</h3>" + _kv_table(mem_rows) + note + "</div>")
    if v.components:
        rows_html = "".join(f"<tr><td>{esc(name)}</td>"
                            + "".join(_cell(x, "num" if i else "") for i, x in enumerate(row))
                            + "</tr>" for name, row in _component_rows(v))
        blocks.append("<div><h3>Components (resident together)</h3><table><tr><th>component</th><th>recipe</th>"
                      "<th>file</th><th>estimate (own)</th><th>measured load</th><th>agreement alone</th></tr>"
                      + rows_html + "</table></div>")
    # stage times
    if v.timings:
        longest = max(v.timings.values()) or 1.0
        body = "".join(f'<tr><th>{esc(k)}</th><td class="num">{s:.1f} s</td><td><span class="bar" '
                       f'style="width:{120 * s / longest:.0f}px"></span></td></tr>' for k, s in v.timings.items())
        body += f'<tr><th>total</th><td class="num">{sum(v.timings.values()):.1f} s</td><td></td></tr>'
        blocks.append(f"<div><h3>Stage times</h3><table>{body}</table></div>")
    out += ['<div class="grid">', *blocks, '</div>']
    notes = [str(n) for n in v.estimate.get("notes", []) if n] if isinstance(v.estimate.get("notes"), list) else []
    if v.fit:
        notes.append(_fit_text(v.fit))
    if v.mixed:
        notes.append(mixed_text(v.mixed))
    if isinstance(v.raw.get("signature"), dict) and v.raw["signature"].get("public_key_sha256"):
        notes.append(f"signed ({v.raw['signature'].get('algorithm', '?')}), public key sha256 "
                     f"{v.raw['signature']['public_key_sha256']}")
    if v.memory.get("measured_on"):
        notes.append(f"memory measured on {v.memory['measured_on']} with the target's session options "
                     f"({v.memory.get('method', '?')})")
    if v.raw.get("archive"):
        notes.append(f"archive {v.raw['archive']}")
    out += [f'<p class="muted">{esc(n)}</p>' for n in notes]
    return out + ['</section>']
