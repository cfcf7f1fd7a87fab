"""Reports of packaging runs: report.json, report.md (a CI job summary) and report.html.

Input: one summary per target, as `packager package --json` prints it (archive, bundle, target,
recipe, sizes, accuracy, memory, fit, smoke, signature, timings_s; unknown keys are kept and
ignored, missing ones are shown as such). A result with an `error` key (a target that failed)
gets a row that says so.

The HTML page is self-contained (inline CSS and SVG, no script, a Content-Security-Policy that
forbids fetching anything): per target, a chart of the memory estimate's breakdown against the
budget with the measured peak marked, then the accuracy figures, sizes and stage times.

Reports are reproducible: the same results give the same bytes. No wall-clock time is written
unless SOURCE_DATE_EPOCH is set (reproducible-builds.org), and then that time is.

    python -m packager.report SUMMARY.json [...] --out DIR   # summaries saved from `package --json`
"""

from __future__ import annotations

import html
import json
import math
import os
import re
import sys
import tempfile
import unicodedata
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from packager import __version__
from packager.errors import ExitCode, PackagerError
from packager.labels import memory_label, provider_name

SCHEMA_VERSION = 1
FILES = ("report.json", "report.md", "report.html")
MiB = 2**20

# The estimate's components (packager/estimate.py): label and colour. Colours from the Okabe-Ito
# palette (distinguishable with the common colour-vision deficiencies); segments are separated by
# white gaps and named in the legend, so colour is never the only cue.
COMPONENTS: dict[str, tuple[str, str]] = {key: (memory_label(key), colour) for key, colour in {
    "runtime_base": "#b8b8b8",
    "weights_inline": "#0072b2",
    "weights_external": "#56b4e9",
    "prepacked": "#009e73",
    "load_transient": "#f0e442",
    "ort_format_buffer": "#7a5195",
    "allocator_overhead": "#cc79a7",
    "activations": "#e69f00",
    "kv_cache": "#d55e00",
    "gpu_context": "#000000",
}.items()}
SPARE_COLOURS = ("#7a5195", "#4d4d4d", "#a6761d", "#1b9e77")
# Components that exist in one phase only: the peak is max(load, run), not their sum.
LOAD_ONLY = frozenset({"load_transient", "ort_format_buffer"})
RUN_ONLY = frozenset({"activations", "kv_cache"})
FITS_COLOUR, OVER_COLOUR = "#1a7f37", "#c0262d"


# ---------------------------------------------------------------- entry point

def write_reports(results: list[dict[str, Any]], out_dir: Path) -> list[Path]:
    """Write report.json, report.md and report.html for `results` into `out_dir` (created if
    missing), each atomically (a temporary file, then a rename); return their paths."""
    results = [_jsonable(r) for r in results]
    for i, r in enumerate(results):
        if not isinstance(r, dict):
            raise PackagerError(f"report: result {i + 1} is a {type(r).__name__}, not a `packager package --json` "
                                "summary (an object).", ExitCode.BAD_INPUT)
    report = build(results)
    texts = {
        "report.json": json.dumps(report, indent=2, ensure_ascii=False, allow_nan=False) + "\n",
        "report.md": markdown(report),
        "report.html": html_page(report),
    }
    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise PackagerError(f"cannot create the report folder {out_dir} ({e.strerror or e}); choose another "
                            "--report folder.", ExitCode.OUTPUT) from None
    return [_write_atomic(out_dir / name, texts[name]) for name in FILES]


def build(results: list[dict[str, Any]]) -> dict[str, Any]:
    """report.json's content."""
    report: dict[str, Any] = {"schema_version": SCHEMA_VERSION,
                              "generated_by": {"tool": "packager", "version": __version__}}
    stamp = _source_date()
    if stamp:
        report["generated_at"] = stamp
    report["results"] = results
    return report


def _write_atomic(path: Path, text: str) -> Path:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except OSError as e:
        Path(tmp).unlink(missing_ok=True)
        raise PackagerError(f"cannot write {path} ({e.strerror or e}); check the folder's permissions and free "
                            "space.", ExitCode.OUTPUT) from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _source_date() -> str | None:
    value = os.environ.get("SOURCE_DATE_EPOCH", "").strip()
    if not value:
        return None
    try:
        return datetime.fromtimestamp(int(value), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    except (ValueError, OverflowError, OSError):
        raise PackagerError(f"SOURCE_DATE_EPOCH={value!r} is not a count of seconds since 1970; set it to an "
                            "integer (e.g. `git log -1 --format=%ct`) or unset it.", ExitCode.USAGE) from None


def _jsonable(value: Any) -> Any:
    """A JSON-safe deep copy: paths and other objects as strings, NaN and infinities as null."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)


# ---------------------------------------------------------------- reading a result

def _num(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


class View:
    """The figures of one result that the reports show, read defensively."""

    def __init__(self, r: dict[str, Any]) -> None:
        self.raw = r
        self.error = r.get("error")
        self.target = str(r.get("target") or "?")
        self.bundle = str(r.get("bundle") or r.get("model") or "?")
        self.recipe = str(r.get("recipe") or "?")
        self.sizes = _dict(r.get("sizes"))
        self.accuracy = _dict(r.get("accuracy"))
        self.memory = _dict(r.get("memory"))
        self.estimate = _dict(self.memory.get("estimate"))
        self.breakdown = {str(k): int(v) for k, v in _dict(self.estimate.get("breakdown")).items()
                          if _num(v) is not None and v >= 0}
        self.timings = {str(k): float(v) for k, v in _dict(r.get("timings_s")).items() if _num(v) is not None}
        # Multi-component models: per component (encoder, decoder), all resident together.
        self.components = {str(k): c for k, c in _dict(self.memory.get("components")).items() if isinstance(c, dict)}
        self.smoke = r.get("smoke") if isinstance(r.get("smoke"), dict) else None
        self.fit = r.get("fit") if isinstance(r.get("fit"), dict) else None
        self.mixed = r.get("mixed") if isinstance(r.get("mixed"), dict) else None
        self.budget = _num(self.memory.get("budget_bytes"))
        self.headroom = _num(self.memory.get("headroom_bytes"))
        self.measured = _num(self.memory.get("measured_peak_bytes"))
        self.basis = str(self.memory.get("verdict_basis")
                         or ("measured" if self.measured is not None else "estimate (high)"))
        if self.budget is not None and self.headroom is not None:
            self.peak: float | None = self.budget - self.headroom
        else:
            self.peak = self.measured if self.measured is not None else _num(self.estimate.get("high_bytes"))
        fits = self.memory.get("fits")
        if isinstance(fits, bool):
            self.fits: bool | None = fits
        else:
            self.fits = None if self.peak is None or self.budget is None else self.peak <= self.budget

    @property
    def has_memory(self) -> bool:
        return self.budget is not None and self.peak is not None

    @property
    def peak_word(self) -> str:
        return "measured peak" if self.basis == "measured" else "estimated peak (high side)"

    def phase(self) -> tuple[str, list[str], list[str]]:
        """The phase whose expected total is larger ('load' or 'run'), the components in it, and
        the ones that belong to the other phase only (not part of the peak)."""
        b = self.breakdown
        load = sum(v for k, v in b.items() if k not in RUN_ONLY)
        run = sum(v for k, v in b.items() if k not in LOAD_ONLY)
        phase = "load" if load > run else "run"
        excluded = RUN_ONLY if phase == "load" else LOAD_ONLY
        return phase, [k for k in b if k not in excluded], [k for k in b if k in excluded]


def component_label(key: str, view: View | None = None) -> str:
    label = memory_label(key)
    context = _num(view.memory.get("context")) if view else None
    if key == "kv_cache" and context:
        label += f" ({int(context)} tokens)"
    return label


def component_colour(key: str) -> str:
    if key in COMPONENTS:
        return COMPONENTS[key][1]
    return SPARE_COLOURS[sum(key.encode()) % len(SPARE_COLOURS)]


# ---------------------------------------------------------------- wording

def size(n: float | None) -> str:
    if n is None:
        return "?"
    a = abs(n)
    if a >= 100 * MiB:
        return f"{n / MiB:.0f} MiB"
    if a >= MiB:
        return f"{n / MiB:.1f} MiB"
    if a >= 1024:
        return f"{n / 1024:.0f} KiB"
    return f"{n:.0f} B"


def gigabytes(n: float) -> str:
    return f"{n / 1e9:.3g} GB"


def budget_text(n: float) -> str:
    """'1431 MiB (1.5 GB)': budgets are set in GB, and compared in MiB like every other figure."""
    return f"{size(n)} ({gigabytes(n)})" if n >= 1e9 else size(n)


def percent(part: float, whole: float) -> str:
    if whole <= 0:
        return "?"
    p = 100 * part / whole
    return "<1%" if 0 < p < 1 else ">99%" if 99 < p < 100 else f"{p:.0f}%"


def verdict_head(v: View) -> str:
    return "failed" if v.error is not None else "no memory figures" if not v.has_memory else \
        "fits" if v.fits else "does not fit"


def margin_text(v: View) -> str:
    """'1319 MiB headroom' or '269 MiB over budget'."""
    margin = (v.budget or 0) - (v.peak or 0)
    return f"{size(margin)} headroom" if margin >= 0 else f"{size(-margin)} over budget"


def peak_sentence(v: View) -> str:
    """'measured peak 112 MiB is 8% of the 1431 MiB budget'."""
    return f"{v.peak_word} {size(v.peak)} is {percent(v.peak or 0, v.budget or 0)} of the {size(v.budget)} budget"


def verdict(v: View) -> str:
    """'fits: measured peak 112 MiB is 8% of the 1431 MiB budget, 1319 MiB headroom'."""
    if v.error is not None or not v.has_memory:
        return verdict_head(v)
    return f"{verdict_head(v)}: {peak_sentence(v)}, {margin_text(v)}"


def size_range(low: float | None, high: float | None) -> str:
    """'83.2 – 99.4 MiB', or one figure where both read the same."""
    a, b = size(low), size(high)
    if a == b:
        return a
    (na, ua), (_, ub) = a.rsplit(" ", 1), b.rsplit(" ", 1)
    return f"{na} – {b}" if ua == ub else f"{a} – {b}"


def accuracy_text(v: View) -> str:
    a = v.accuracy
    if not a:
        return "not measured"
    if a.get("metric") == "per model":   # a bundle of several models: each one's against its own fp32
        return "; ".join(f"{name}: {_accuracy_text(_dict(m))}" for name, m in _dict(a.get("components")).items())
    ev = _dict(a.get("eval"))
    if ev:   # --eval: the user's own cases, packaged against fp32
        return f"{_accuracy_text(a)}; eval {ev.get('packaged_passed', '?')}/{ev.get('cases', '?')} (fp32 " \
               f"{ev.get('reference_passed', '?')}/{ev.get('cases', '?')})"
    return _accuracy_text(a)


def _accuracy_text(a: dict[str, Any]) -> str:
    threshold = a.get("threshold")
    if a.get("metric") == "token agreement":
        t = _dict(threshold)
        agree, cos = _num(a.get("token_agreement")), _num(a.get("min_logits_cosine"))
        parts = [f"tokens {_down(100 * agree, 1):.1f}%" if agree is not None else "tokens ?",
                 f"logits cosine {_down(cos, 4):.4f}" if cos is not None else "logits cosine ?"]
        limits = [f"{t['token_agreement']:.0%}" if _num(t.get("token_agreement")) is not None else "?",
                  f"{t['logits_cosine']:g}" if _num(t.get("logits_cosine")) is not None else "?"]
        return f"{parts[0]}, {parts[1]} (thresholds {limits[0]}, {limits[1]})"
    cos = _num(a.get("min_cosine"))
    text = f"min cosine {_down(cos, 5):.5f}" if cos is not None else f"{a.get('metric', '?')}"
    return text + (f" (threshold {threshold:g})" if _num(threshold) is not None else "")


def _down(x: float, digits: int) -> float:
    """Rounded down: a figure shown against a threshold never reads better than it is (0.9999994 is
    0.99999, not 1.00000)."""
    rounded: float = math.floor(x * 10**digits + 1e-9) / 10**digits
    return rounded


def smoke_text(v: View) -> str:
    if v.smoke is None:
        return "not run"
    mode = v.smoke.get("mode")
    return f"{v.smoke.get('verdict', '?')}" + (f" ({mode})" if mode else "")


def peak_text(v: View) -> str:
    if not v.has_memory:
        return "?"
    assert v.peak is not None and v.budget is not None
    basis = "" if v.basis == "measured" else ", estimated"
    return f"{size(v.peak)} of {size(v.budget)} ({percent(v.peak, v.budget)}{basis})"


def model_size(v: View) -> str:
    return size(_num(v.sizes.get("model_bytes")))


def error_text(v: View) -> str:
    code = v.raw.get("exit_code")
    return f"error{f' (exit {code})' if code is not None else ''}: {v.error}"


# ---------------------------------------------------------------- Markdown

# Emphasis, code, links and images, HTML and entities, table cells, strikethrough, GitHub's
# math ($), emoji shortcodes (:) and mentions (@); the rest only matter at the start of a line.
_MD_SPECIAL = re.compile(r"([\\`*_\[\]<>&|~$:@!#])")


def _clean(text: Any) -> str:
    """One line of printable text: control characters (line breaks included) become spaces."""
    s = str(text)
    return "".join(" " if unicodedata.category(c) in ("Cc", "Zl", "Zp") else c for c in s)


def md(text: Any) -> str:
    """Text as literal Markdown: every character Markdown or a GFM table could read escaped."""
    return _MD_SPECIAL.sub(r"\\\1", _clean(text))


def _md_table(header: list[str], rows: Iterable[list[str]], right: Iterable[int] = ()) -> list[str]:
    align = ["---:" if i in set(right) else "---" for i in range(len(header))]
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(align) + " |"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return lines + [""]


def markdown(report: dict[str, Any]) -> str:
    views = [View(r) for r in report["results"]]
    out = ["## packager report", ""]
    if not views:
        out += ["No results.", ""]
    rows = []
    for v in views:
        if v.error is not None:
            rows.append([md(v.target), md(v.bundle), md(v.recipe), "", "", "", "❌ " + md(error_text(v)), ""])
            continue
        mark = "✅" if v.fits else "❌" if v.fits is False else "❔"
        cell = f"{mark} {md(verdict_head(v))}, {md(margin_text(v))}" if v.has_memory else md(verdict_head(v))
        rows.append([md(v.target), md(v.bundle), md(v.recipe), md(model_size(v)), md(accuracy_text(v)),
                     md(peak_text(v)), cell, md(smoke_text(v))])
    if views:
        out += _md_table(["target", "bundle", "recipe", "model size", "accuracy", "peak of budget", "verdict", "smoke"],
                         rows, right=(3,))
    for v in views:
        out += _md_section(v)
    out.append(_footer_text(report))
    return "\n".join(out) + "\n"


def _md_section(v: View) -> list[str]:
    out = [f"### {md(v.target)}: {md(v.bundle)} ({md(v.recipe)})", ""]
    if v.error is not None:
        return out + [md(error_text(v)), ""]
    out += [md(_sentence(verdict(v))) + ".", ""]
    if v.breakdown:
        phase, included, excluded = v.phase()
        rows = [[md(component_label(k, v)), md(size(v.breakdown[k])),
                 "" if k in included else md(f"{'run' if phase == 'load' else 'load'} only, not at the peak")]
                for k in v.breakdown if v.breakdown[k] > 0]
        est_low, est_high = _num(v.estimate.get("low_bytes")), _num(v.estimate.get("high_bytes"))
        rows.append([f"**estimated peak** ({phase} phase)", md(size_range(est_low, est_high)), "low – high"])
        if v.measured is not None:
            load, run = _num(v.memory.get("load_peak_bytes")), _num(v.memory.get("run_peak_bytes"))
            rows.append(["**measured peak**", md(size(v.measured)), md(f"load {size(load)}, run {size(run)}")])
        if v.budget is not None:
            rows.append(["**budget**", md(size(v.budget)), md(gigabytes(v.budget))])
        out += _md_table(["memory", "size", "note"], rows, right=(1,))
    if v.components:
        out += _md_table(["model component", "recipe", "file", "estimate (own)", "measured load",
                          "token agreement alone"],
                         [[md(k), *map(md, row)] for k, row in _component_rows(v)], right=(2, 3, 4))
    out += _md_table(["accuracy", "sizes", "smoke"], [[md(accuracy_text(v)), md(
        f"model {model_size(v)}, archive {size(_num(v.sizes.get('archive_bytes')))}"), md(smoke_text(v))]])
    if v.fit:
        out += [md(_fit_text(v.fit)), ""]
    if v.mixed:
        out += [md(mixed_text(v.mixed)), ""]
    if v.timings:
        total = sum(v.timings.values())
        out += _md_table(["stage", "seconds"], [[md(k), f"{s:.1f}"] for k, s in v.timings.items()] +
                         [["**total**", f"**{total:.1f}**"]], right=(1,))
    return out


def _component_rows(v: View) -> list[tuple[str, list[str]]]:
    """Per component: recipe, file size, own estimate (the shared runtime is in the whole's), measured
    load, and the token agreement with that component alone packaged (the other at fp32)."""
    alone = _dict(v.accuracy.get("components"))
    rows = []
    for name, c in v.components.items():
        est = _dict(c.get("estimate"))
        agreement = _num(_dict(alone.get(name)).get("token_agreement"))
        rows.append((name, [str(c.get("recipe", "?")), size(_num(c.get("size_bytes"))),
                            size_range(_num(est.get("low_bytes")), _num(est.get("high_bytes"))),
                            size(_num(c.get("measured_load_bytes"))),
                            "" if agreement is None else f"{agreement:.1%}"]))
    return rows


def _fit_text(fit: dict[str, Any]) -> str:
    tried = "; ".join(f"{t.get('recipe')}: {t.get('outcome')}" for t in fit.get("tried", []) if isinstance(t, dict))
    chosen = fit.get("chosen")
    head = f"fit {fit.get('mode', 'auto')}: chose {chosen} ({fit.get('why', '')})" if chosen else \
        f"fit {fit.get('mode', 'auto')}: nothing chosen"
    return head + (f"; tried {tried}" if tried else "")


def mixed_text(mixed: dict[str, Any]) -> str:
    """int4-mixed in a sentence: the layers at 8 bits, their cost over int4, and the sensitivity behind the choice."""
    layers = [str(x) for x in mixed.get("layers_8bit", []) if isinstance(x, str)]
    cost = _num(mixed.get("cost_bytes")) or 0
    ranking = [r for r in mixed.get("sensitivity", []) if isinstance(r, dict)]
    if not layers:
        return f"int4-mixed: every layer at 4 bits ({mixed.get('why', 'int4 keeps the answers')})"
    text = f"int4-mixed: {', '.join(layers)} at 8 bits, +{size(cost)} over int4"
    if ranking:
        text += (f" ({mixed.get('why', '')}); sensitivity, KL from fp32 with only that layer at 4 bits, measured on "
                 f"{mixed.get('measured_on', '?')}: "
                 + ", ".join(f"{r.get('layer')} {_num(r.get('kl_at_4bit')) or 0:.4f}" for r in ranking))
    return text


def _footer_text(report: dict[str, Any]) -> str:
    by = report["generated_by"]
    when = f" at {report['generated_at']}" if "generated_at" in report else ""
    return f"Generated by {by['tool']} {by['version']}{when}."


# ---------------------------------------------------------------- SVG chart

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


def _sentence(text: str) -> str:
    return text[:1].upper() + text[1:]


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


# ---------------------------------------------------------------- HTML

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


# ---------------------------------------------------------------- python -m packager.report

def _load(path: Path) -> list[dict[str, Any]]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise PackagerError(f"{path}: cannot read a JSON summary ({e}); pass files saved from "
                            "`packager package --json`.", ExitCode.BAD_INPUT) from None
    if isinstance(data, dict) and isinstance(data.get("results"), list):  # an earlier report.json
        results: list[dict[str, Any]] = data["results"]
        return results
    return data if isinstance(data, list) else [data]


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m packager.report",
                                     description="Write report.json, report.md and report.html from "
                                     "`packager package --json` summaries (or earlier report.json files).")
    parser.add_argument("summaries", nargs="+", type=Path, help="JSON files: one summary, a list, or a report.json")
    parser.add_argument("--out", "-o", type=Path, required=True, help="folder for the reports")
    args = parser.parse_args(argv)
    try:
        results = [r for p in args.summaries for r in _load(p)]
        for path in write_reports(results, args.out):
            print(path)
    except PackagerError as e:
        print(f"error: {e.message}", file=sys.stderr)
        return int(e.code)
    return 0


if __name__ == "__main__":
    sys.exit(main())
