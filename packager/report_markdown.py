"""report.md: the Markdown report (a CI job summary), every user-given text escaped."""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from packager.report_view import (
    View,
    _clean,
    _component_rows,
    _fit_text,
    _footer_text,
    _num,
    _sentence,
    accuracy_text,
    component_label,
    error_text,
    gigabytes,
    margin_text,
    mixed_text,
    model_size,
    peak_text,
    size,
    size_range,
    smoke_text,
    verdict,
    verdict_head,
)

# Emphasis, code, links and images, HTML and entities, table cells, strikethrough, GitHub's
# math ($), emoji shortcodes (:) and mentions (@); the rest only matter at the start of a line.
_MD_SPECIAL = re.compile(r"([\\`*_\[\]<>&|~$:@!#])")


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


