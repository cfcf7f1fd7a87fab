"""The pipeline: the ordered list of stages, run over one Context in a private work folder."""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from packager.cache import StageCache
from packager.config import PackageSettings
from packager.context import Context, InputSpec
from packager.errors import ExitCode, PackagerError, did_you_mean
from packager.estimate import runtime_base
from packager.progress import Reporter
from packager.recipes import CALIBRATED, RECIPES
from packager.stages import bundle, compat, export, fit, mobile, quantize, samples, source, verify
from packager.stages.bundle import check_output_dir

STAGES: list[tuple[str, Callable[[Context], None]]] = [
    ("source", source.run),
    ("export", export.run),
    ("quantize", quantize.run),
    ("compat", compat.run),
    ("mobile", mobile.run),      # phone profiles: model.ort, which the runner loads from here on
    ("samples", samples.run),
    ("verify", verify.run),
    ("fit", fit.run),
    ("bundle", bundle.run),
]


# `packager check`: what the model needs on the target, without verifying or bundling.
CHECK_STAGES = ("source", "export", "quantize", "mobile", "samples", "fit")


@contextlib.contextmanager
def _workspace(model: str, settings: PackageSettings, recipe_name: str, bundles: bool,
               **options: Any) -> Iterator[Context]:
    """Checks that fail before any work, a private work folder, and its removal however the run ends."""
    if recipe_name not in RECIPES:
        raise PackagerError(f"unknown recipe {recipe_name!r}{did_you_mean(recipe_name, list(RECIPES))}; "
                            f"recipes: {', '.join(RECIPES)}.", ExitCode.USAGE)
    check_budget(settings)
    _check_calibration(options.get("calibration"), recipe_name, settings)
    if bundles:
        check_output_dir(settings.out.value)  # before minutes of work, not after
    work_dir = Path(tempfile.mkdtemp(prefix="packager-"))
    try:
        explicit = not settings.recipe.origin.startswith("profile")
        yield Context(model, settings.profile, recipe_name, work_dir, settings.out.value, recipe_explicit=explicit,
                      **options)
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)


def _check_calibration(path: Path | None, recipe_name: str, settings: PackageSettings) -> None:
    """--calibration problems that need no export to find."""
    if path is None:
        return
    if not path.is_file():
        raise PackagerError(f"the calibration file {path} does not exist; give text lines (text models) or an .npz "
                            "of inputs.", ExitCode.BAD_INPUT)
    if not settings.recipe.origin.startswith("profile") and recipe_name not in CALIBRATED:
        raise PackagerError(f"--calibration is for the calibrated recipes ({', '.join(sorted(CALIBRATED))}); recipe "
                            f"{recipe_name} does not use it: drop it or use --recipe int8-static.", ExitCode.USAGE)


def _run(model: str, settings: PackageSettings, stages: tuple[str, ...], reporter: Reporter | None,
         **options: Any) -> Context:
    reporter = reporter or Reporter(quiet=True)
    with _workspace(model, settings, str(settings.recipe.value), "bundle" in stages, **options) as ctx:
        for stage_name, _ in STAGES:
            if stage_name in stages:
                _stage(ctx, reporter, stage_name)
    return ctx


def package(model: str, settings: PackageSettings, *, name: str | None = None, input_spec: InputSpec | None = None,
            reporter: Reporter | None = None, fit_auto: bool = False, allow_pickle: bool = False,
            sign_key: Path | None = None, context: int | None = None, calibration: Path | None = None,
            stage_cache: StageCache | None = None, adapter: str | None = None,
            eval_file: Path | None = None) -> Context:
    """Package MODEL for the settings' target into <out>/<name>-<target>.tar.gz; raises PackagerError.

    With `fit_auto`, the recipe is the first of the profile's `fit_recipes` (most precise first)
    that fits the budget and passes verify; the export runs once for all of them. With `sign_key`
    (an Ed25519 private key), the bundle's manifest is signed (packager/signing.py). With
    `stage_cache`, the export comes from (and goes to) that cache (packager/cache.py). With `adapter`
    (a PEFT LoRA folder, packager/adapter.py), it is merged into the weights before export; with
    `eval_file` (JSONL cases, packager/evaluation.py), verify gates on the user's own cases."""
    if sign_key is not None:
        from packager.signing import load_private_key

        load_private_key(sign_key)  # a bad key fails before minutes of work, not after
    eval_cases: list[dict[str, Any]] = []
    if eval_file is not None:
        from packager.evaluation import read_cases

        _, eval_cases = read_cases(eval_file)  # a malformed file fails before the export, not after
    options: dict[str, Any] = {"name": name, "input_spec": input_spec or InputSpec(), "allow_pickle": allow_pickle,
                               "sign_key": sign_key, "context": context, "calibration": calibration,
                               "stage_cache": stage_cache, "adapter": adapter, "eval_file": eval_file,
                               "eval_cases": eval_cases}
    if not fit_auto:
        return _run(model, settings, tuple(s for s, _ in STAGES), reporter, **options)
    reporter = reporter or Reporter(quiet=True)
    with _workspace(model, settings, settings.profile.recipe, True, **options) as ctx:
        for stage_name in ("source", "export"):
            _stage(ctx, reporter, stage_name)
        _choose_recipe(ctx, reporter, settings.profile.fit_recipes_for(ctx.io["kind"]))
        _stage(ctx, reporter, "bundle")
    return ctx


def _choose_recipe(ctx: Context, reporter: Reporter, recipes: tuple[str, ...]) -> None:
    """--fit auto: run the recipe-dependent stages for each recipe until one fits and passes verify."""
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
        return
    tried = "; ".join(f"{t['recipe']}: {t['outcome']}" for t in ctx.fit["tried"])
    raise PackagerError(f"no recipe of {ctx.profile.name} fits and keeps the answers ({tried})", ExitCode.DOES_NOT_FIT)


def check_budget(settings: PackageSettings) -> None:
    """A budget below what the runtime alone holds cannot be met by any model: say so up front."""
    base, _ = runtime_base(settings.profile, "tensor")
    budget = settings.profile.budget.memory_bytes
    if budget < base:
        from_profile = settings.budget.origin.startswith("profile")
        raise PackagerError(
            f"the memory budget of {budget / 2**20:.0f} MiB (from {settings.budget.origin}) is smaller than the runtime "
            f"itself ({base / 2**20:.0f} MiB for {settings.profile.runtime.package} {settings.profile.runtime.version} "
            f"on {settings.profile.name}); raise it{' in the profile' if from_profile else ''}.",
            ExitCode.BAD_PROFILE if from_profile else ExitCode.USAGE)


# The stages a recipe changes: --fit auto reruns them for each recipe it tries.
PER_RECIPE = ("quantize", "compat", "mobile", "samples", "verify", "fit")


CACHE_NOTES = {"hit": "cache hit", "corrupt": "damaged cache entry rebuilt"}


def _stage(ctx: Context, reporter: Reporter, name: str) -> None:
    with reporter.stage(name, ctx.timings) as step:
        dict(STAGES)[name](ctx)
        step.note = CACHE_NOTES.get(ctx.cache.get(name, ""), "")
    for note in ctx.cache_notes:
        reporter.print(note)
    ctx.cache_notes.clear()


def check(model: str, settings: PackageSettings, *, context: int | None = None, measure: bool = True,
          input_spec: InputSpec | None = None, reporter: Reporter | None = None, allow_pickle: bool = False,
          stage_cache: StageCache | None = None) -> Context:
    """Estimate (and measure) MODEL's peak memory on the target; ctx.memory holds the verdict."""
    return _run(model, settings, CHECK_STAGES, reporter, input_spec=input_spec or InputSpec(), context=context,
                measure=measure, enforce_budget=False, allow_pickle=allow_pickle, stage_cache=stage_cache)
