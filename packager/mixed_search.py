"""int4-mixed's search: plain int4 if it passes verify, else the fewest most sensitive layers at 8 bits that
do (packager/mixed.py measures the sensitivity). Any recipe that `searches_layers` runs its stages through here."""

from __future__ import annotations

import dataclasses
import shutil

from packager import mixed
from packager.context import Context
from packager.errors import ExitCode, PackagerError
from packager.progress import Reporter
from packager.recipes import searched
from packager.stage_runner import fp32_reference, run_stage


def recipe_stages(ctx: Context, reporter: Reporter, stages: tuple[str, ...]) -> None:
    """The stages a recipe changes. int4-mixed first finds the layers it keeps at 8 bits (_search_mixed)."""
    if searched(ctx.recipe_name) and "verify" in stages:
        _search_mixed(ctx, reporter, stages)
        return
    for stage_name in stages:
        run_stage(ctx, reporter, stage_name)
    if searched(ctx.recipe_name) and ctx.memory is not None:   # `packager check`: no verify, so no search
        ctx.memory.estimate.notes.append(
            "int4-mixed chooses its 8-bit layers in verify, which check does not run: these are int4's figures, "
            "the least int4-mixed can take; `packager package` reports the layers it keeps and their bytes")


def _search_mixed(ctx: Context, reporter: Reporter, stages: tuple[str, ...]) -> None:
    """int4-mixed: plain int4 if it passes verify; else each layer's sensitivity (packager/mixed.py),
    then the fewest most-sensitive layers at 8 bits that pass verify, by bisection (which assumes that
    more layers at 8 bits do not make the answers worse: each step is verified, so what it picks passes,
    if not always the very fewest), then fit on that model."""
    judged = tuple(s for s in stages if s != "fit")
    search = ctx.mixed_search
    if "layers_8bit" in search:     # --fit auto again, at a shorter context: the same layers
        _attempt_mixed(ctx, reporter, judged, tuple(search["layers_8bit"]), raise_rejection=True)
    elif (rejected := _attempt_mixed(ctx, reporter, judged, ())) is None:
        search |= {"layers_8bit": [], "why": "int4 keeps the answers: no layer needs 8 bits"}
    else:
        _bisect_mixed(ctx, reporter, judged, rejected)
    assert ctx.recipe is not None  # the quantize stage ran
    ctx.recipe = dataclasses.replace(ctx.recipe, extra=ctx.recipe.extra | {"search": search})
    if "fit" in stages:
        run_stage(ctx, reporter, "fit")


def _bisect_mixed(ctx: Context, reporter: Reporter, judged: tuple[str, ...], int4_rejected: PackagerError) -> None:
    search = ctx.mixed_search
    reporter.print("int4-mixed: int4 alone changes the answers; measuring each layer's sensitivity")
    fp32_reference(ctx)   # measured on the fp32 export, which a runtime that builds its own model had no need of
    ranking, measured_on = mixed.sensitivity(ctx)
    order = tuple(r["layer"] for r in ranking)
    search |= {"measured_on": measured_on, "sensitivity": ranking,
               "tries": [{"layers_8bit": 0, "outcome": int4_rejected.message}]}
    reporter.print("int4-mixed: most sensitive first: " + ", ".join(f"{r['layer']} (KL {r['kl_at_4bit']:.4f})"
                                                               for r in ranking))
    low, high, best, last = 1, len(order), None, None
    rejection: PackagerError | None = None
    while low <= high:
        count = (low + high) // 2
        reporter.print(f"int4-mixed: trying {', '.join(order[:count])} at 8 bits")
        rejected = _attempt_mixed(ctx, reporter, judged, order[:count])
        last = count
        search["tries"].append({"layers_8bit": count, "outcome": rejected.message if rejected else "passes verify"})
        if rejected is None:
            best, high = count, count - 1
        else:
            rejection, low = rejected, count + 1
    if best is None:
        assert rejection is not None
        head, _, fix = rejection.message.partition("; try ")
        raise PackagerError(f"{head}, even with all {len(order)} layers at 8 bits (int4-mixed); try {fix}",
                            ExitCode.ACCURACY)
    if last != best:
        _attempt_mixed(ctx, reporter, judged, order[:best], raise_rejection=True)
    search |= {"layers_8bit": list(order[:best]),
               "why": f"the {best} most sensitive of {len(order)} layers at 8 bits: the fewest that pass verify"}
    reporter.print(f"int4-mixed: {', '.join(order[:best])} at 8 bits")


def _attempt_mixed(ctx: Context, reporter: Reporter, judged: tuple[str, ...], keep: tuple[str, ...],
                   raise_rejection: bool = False) -> PackagerError | None:
    """Run the recipe's stages up to verify with `keep` at 8 bits: None if verify passes, else its verdict."""
    ctx.keep_8bit = keep
    shutil.rmtree(ctx.stage_dir, ignore_errors=True)
    try:
        for stage_name in judged:
            run_stage(ctx, reporter, stage_name)
    except PackagerError as e:
        if e.code != ExitCode.ACCURACY or raise_rejection:
            raise
        return e
    return None
