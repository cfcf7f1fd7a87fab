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
    work_dir = Path(tempfile.mkdtemp(prefix="packager-"))
    ctx = Context(model, settings.profile, recipe_name, work_dir, settings.out.value, **options)
    try:
        for stage_name, stage in STAGES:
            if stage_name in stages:
                with reporter.stage(stage_name, ctx.timings):
                    stage(ctx)
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)
    return ctx


def package(model: str, settings: PackageSettings, *, name: str | None = None,
            input_spec: InputSpec | None = None, reporter: Reporter | None = None) -> Context:
    """Package MODEL for the settings' target into <out>/<name>-<target>.tar.gz; raises PackagerError."""
    return _run(model, settings, tuple(s for s, _ in STAGES), reporter, name=name,
                input_spec=input_spec or InputSpec())


def check(model: str, settings: PackageSettings, *, context: int | None = None, measure: bool = True,
          input_spec: InputSpec | None = None, reporter: Reporter | None = None) -> Context:
    """Estimate (and measure) MODEL's peak memory on the target; ctx.memory holds the verdict."""
    return _run(model, settings, CHECK_STAGES, reporter, input_spec=input_spec or InputSpec(), context=context,
                measure=measure, enforce_budget=False)
