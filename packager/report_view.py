"""What the reports (packager/report.py) say about one target, in words both the Markdown and the HTML use: a
result read leniently (`View`: missing keys shown as such), the memory components' labels and colours, and the
sentences for sizes, the verdict, accuracy, the smoke test and the peak."""

from __future__ import annotations

import math
import unicodedata
from typing import Any

from packager.labels import memory_label, recipe_label

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
        # what the recipe did (fp32 where it found nothing to quantize), with its shares of the weight bytes
        self.recipe = recipe_label(str(r.get("recipe") or "?"), _dict(r.get("coverage")))
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


def mapped_text(v: View) -> str:
    """'; 2240 MiB of lookup tables mapped from storage, not resident' for a model with mapped tables (an E-class
    model's per-layer embeddings: the peak counts the pages its tokens read), '' otherwise."""
    mapped = _num(v.estimate.get("mapped_bytes"))
    return f"; {size(mapped)} of lookup tables mapped from storage, not resident" if mapped else ""


def on_demand_text(v: View) -> str:
    """'; loaded on demand, the image encoder 154 MiB (its mode's peak 974 MiB) and ...' for a multimodal decoder's
    encoders (memory.on_demand; each mode's peak measured, else its estimate's high side), '' otherwise."""
    files = _dict(v.memory.get("on_demand"))
    measured, estimated = _dict(v.memory.get("modes")), _dict(v.estimate.get("modes"))
    parts = []
    for mode, f in files.items():
        peak = _num(_dict(measured.get(mode)).get("peak_bytes"))
        word = "peak"
        if peak is None:
            peak, word = _num(_dict(estimated.get(mode)).get("high_bytes")), "estimated peak"
        parts.append(f"the {mode} encoder {size(_num(_dict(f).get('size_bytes')))}"
                     + (f" (its mode's {word} {size(peak)})" if peak is not None else ""))
    return f"; loaded on demand, {' and '.join(parts)}" if parts else ""


def verdict(v: View) -> str:
    """'fits: measured peak 112 MiB is 8% of the 1431 MiB budget, 1319 MiB headroom'."""
    if v.error is not None or not v.has_memory:
        return verdict_head(v)
    return f"{verdict_head(v)}: {peak_sentence(v)}, {margin_text(v)}{mapped_text(v)}{on_demand_text(v)}"


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
    mapped = _num(v.estimate.get("mapped_bytes"))
    return f"{size(v.peak)} of {size(v.budget)} ({percent(v.peak, v.budget)}{basis})" + \
        (f", + {size(mapped)} mapped" if mapped else "")


def model_size(v: View) -> str:
    return size(_num(v.sizes.get("model_bytes")))


def error_text(v: View) -> str:
    code = v.raw.get("exit_code")
    return f"error{f' (exit {code})' if code is not None else ''}: {v.error}"


def _clean(text: Any) -> str:
    """One line of printable text: control characters (line breaks included) become spaces."""
    s = str(text)
    return "".join(" " if unicodedata.category(c) in ("Cc", "Zl", "Zp") else c for c in s)


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
    # mode "default": the profile's default recipe, rejected by verify, and the more precise one that replaced it
    search = "recipe" if fit.get("mode") == "default" else f"fit {fit.get('mode', 'auto')}"
    head = f"{search}: chose {chosen} ({fit.get('why', '')})" if chosen else f"{search}: nothing chosen"
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


def _sentence(text: str) -> str:
    return text[:1].upper() + text[1:]
