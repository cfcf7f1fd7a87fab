"""The pipeline: the ordered list of stages, run over one Context in a private work folder."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from packager.config import PackageSettings
from packager.context import Context, InputSpec
from packager.errors import ExitCode, PackagerError, did_you_mean
from packager.progress import Reporter
from packager.recipes import RECIPES
from packager.stages import bundle, export, fit, quantize, samples, source, verify
from packager.stages.bundle import check_output_dir

STAGES: list[tuple[str, Callable[[Context], None]]] = [
    ("source", source.run),
    ("export", export.run),
    ("quantize", quantize.run),
    ("samples", samples.run),
    ("verify", verify.run),
    ("fit", fit.run),
    ("bundle", bundle.run),
]


# `packager check`: what the model needs on the target, without verifying or bundling.
CHECK_STAGES = ("source", "export", "quantize", "samples", "fit")


def _run(model: str, settings: PackageSettings, stages: tuple[str, ...], reporter: Reporter | None,
         **options: Any) -> Context:
    recipe_name = str(settings.recipe.value)
    if recipe_name not in RECIPES:
        raise PackagerError(f"unknown recipe {recipe_name!r}{did_you_mean(recipe_name, list(RECIPES))}; "
                            f"recipes: {', '.join(RECIPES)}.", ExitCode.USAGE)
    reporter = reporter or Reporter(quiet=True)
    if "bundle" in stages:
        check_output_dir(settings.out.value)  # before minutes of work, not after
    work_dir = Path(tempfile.mkdtemp(prefix="packager-"))
    ctx = Context(model, settings.profile, recipe_name, work_dir, settings.out.value, **options)
    try:
        for stage_name, _ in STAGES:
            if stage_name in stages:
                _stage(ctx, reporter, stage_name)
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)
    return ctx


def package(model: str, settings: PackageSettings, *, name: str | None = None, input_spec: InputSpec | None = None,
            reporter: Reporter | None = None, fit_auto: bool = False) -> Context:
    """Package MODEL for the settings' target into <out>/<name>-<target>.tar.gz; raises PackagerError.

    With `fit_auto`, the recipe is the first of the profile's `fit_recipes` (most precise first)
    that fits the budget and passes verify; the export runs once for all of them."""
    if not fit_auto:
        return _run(model, settings, tuple(s for s, _ in STAGES), reporter, name=name,
                    input_spec=input_spec or InputSpec())
    reporter = reporter or Reporter(quiet=True)
    check_output_dir(settings.out.value)
    work_dir = Path(tempfile.mkdtemp(prefix="packager-"))
    recipes = settings.profile.fit_recipes or (settings.profile.recipe,)
    ctx = Context(model, settings.profile, recipes[0], work_dir, settings.out.value, input_spec or InputSpec(), name=name)
    try:
        for stage_name in ("source", "export"):
            _stage(ctx, reporter, stage_name)
        ctx.fit = {"mode": "auto", "tried": []}
        for recipe in recipes:
            ctx.recipe_name = recipe
            shutil.rmtree(ctx.stage_dir, ignore_errors=True)
            try:
                for stage_name in PER_RECIPE:
                    _stage(ctx, reporter, stage_name)
            except PackagerError as e:
                if e.code not in (ExitCode.DOES_NOT_FIT, ExitCode.ACCURACY):
                    raise
                ctx.fit["tried"].append({"recipe": recipe, "outcome": e.message})
                reporter.print(f"fit auto: {recipe} rejected: {e.message}")
                continue
            ctx.fit["tried"].append({"recipe": recipe, "outcome": "fits and passes verify"})
            ctx.fit["chosen"] = recipe
            ctx.fit["why"] = ("the most precise recipe that fits" if recipe == recipes[0] else
                              f"the most precise recipe that fits and keeps the answers; "
                              f"{', '.join(t['recipe'] for t in ctx.fit['tried'][:-1])} did not")
            reporter.print(f"fit auto: chose {recipe}: {ctx.fit['why']}")
            break
        else:
            tried = "; ".join(f"{t['recipe']}: {t['outcome']}" for t in ctx.fit["tried"])
            raise PackagerError(f"no recipe of {ctx.profile.name} fits and keeps the answers ({tried})",
                                ExitCode.DOES_NOT_FIT)
        _stage(ctx, reporter, "bundle")
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)
    return ctx


# The stages a recipe changes: --fit auto reruns them for each recipe it tries.
PER_RECIPE = ("quantize", "samples", "verify", "fit")


def _stage(ctx: Context, reporter: Reporter, name: str) -> None:
    with reporter.stage(name, ctx.timings):
        dict(STAGES)[name](ctx)


def check(model: str, settings: PackageSettings, *, context: int | None = None, measure: bool = True,
          input_spec: InputSpec | None = None, reporter: Reporter | None = None) -> Context:
    """Estimate (and measure) MODEL's peak memory on the target; ctx.memory holds the verdict."""
    return _run(model, settings, CHECK_STAGES, reporter, input_spec=input_spec or InputSpec(), context=context,
                measure=measure, enforce_budget=False)
