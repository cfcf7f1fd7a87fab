"""The pipeline: the ordered list of stages, run over one Context in a private work folder."""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from packager.cache import StageCache
from packager.config import PackageSettings
from packager.context import Context, InputSpec
from packager.errors import ExitCode, PackagerError
from packager.estimate import runtime_base
from packager.fit_auto import choose_recipe
from packager.leftovers import sweep_run_leftovers, work_folder
from packager.mixed_search import recipe_stages
from packager.progress import Reporter
from packager.recipes import calibrated, parse_recipe
from packager.stage_runner import CHECK_STAGES, PER_RECIPE, STAGES, run_stage
from packager.stages import fit
from packager.stages.bundle import check_output_dir


@contextlib.contextmanager
def _workspace(model: str, settings: PackageSettings, recipe_name: str, bundles: bool,
               **options: Any) -> Iterator[Context]:
    """Checks that fail before any work, a private work folder, and its removal however the run ends."""
    parse_recipe(recipe_name)  # an unknown recipe fails here; unknown component names once the export names them
    check_budget(settings)
    _check_calibration(options.get("calibration"), recipe_name, settings)
    if bundles:
        check_output_dir(settings.out.value)  # before minutes of work, not after
    sweep_run_leftovers(settings.out.value if bundles else None)
    work_dir = work_folder("work")
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
    if not settings.recipe.origin.startswith("profile") and not calibrated(parse_recipe(recipe_name)):
        from packager.calibration import unused_calibration

        raise unused_calibration(recipe_name)


def _run(model: str, settings: PackageSettings, stages: tuple[str, ...], reporter: Reporter | None,
         **options: Any) -> Context:
    reporter = reporter or Reporter(quiet=True)
    with _workspace(model, settings, str(settings.recipe.value), "bundle" in stages, **options) as ctx:
        for stage_name in ("source", "export"):
            if stage_name in stages:
                run_stage(ctx, reporter, stage_name)
        recipe_stages(ctx, reporter, tuple(s for s in PER_RECIPE if s in stages))
        if "bundle" in stages:
            run_stage(ctx, reporter, "bundle")
        elif ctx.member_dir is not None:   # `packager check` of several models: measured together next
            if not ctx.measure:   # measuring made it runnable already
                fit.runnable(ctx)
            shutil.copytree(ctx.stage_dir, ctx.member_dir)
    return ctx


def package(model: str, settings: PackageSettings, *, name: str | None = None, input_spec: InputSpec | None = None,
            reporter: Reporter | None = None, fit_auto: bool = False, allow_pickle: bool = False,
            sign_key: Path | None = None, context: int | None = None, calibration: Path | None = None,
            stage_cache: StageCache | None = None, adapter: str | None = None,
            eval_file: Path | None = None, member_dir: Path | None = None) -> Context:
    """Package MODEL for the settings' target into <out>/<name>-<target>.tar.gz; raises PackagerError.

    With `fit_auto`, the recipe is the first of the profile's `fit_recipes` (most precise first)
    that fits the budget and passes verify; the export runs once for all of them. With `sign_key`
    (an Ed25519 private key), the bundle's manifest is signed (packager/signing.py). With
    `stage_cache`, the export comes from (and goes to) that cache (packager/cache.py). With `adapter`
    (a PEFT LoRA folder, packager/adapter.py), it is merged into the weights before export; with
    `eval_file` (JSONL cases, packager/evaluation.py), verify gates on the user's own cases. With
    `member_dir` (one model of several, packager/suite.py), the finished folder goes there, not into
    an archive."""
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
                               "eval_cases": eval_cases, "member_dir": member_dir}
    if not fit_auto:
        return _run(model, settings, tuple(s for s, _ in STAGES), reporter, **options)
    reporter = reporter or Reporter(quiet=True)
    with _workspace(model, settings, settings.profile.recipe, True, **options) as ctx:
        for stage_name in ("source", "export"):
            run_stage(ctx, reporter, stage_name)
        choose_recipe(ctx, reporter, settings.profile.fit_recipes_for(ctx.io["kind"]))
        run_stage(ctx, reporter, "bundle")
    return ctx


def check_budget(settings: PackageSettings) -> None:
    """A budget below what the runtime alone holds cannot be met by any model: say so up front."""
    base, _ = runtime_base(settings.profile, "tensor")
    budget = settings.profile.budget.memory_bytes
    if budget < base:
        from_profile = settings.budget.origin.startswith("profile")
        raise PackagerError(
            f"the memory budget of {budget / 2**20:.0f} MiB (from {settings.budget.origin}) is smaller than the "
            f"runtime itself ({base / 2**20:.0f} MiB for {settings.profile.runtime.package} "
            f"{settings.profile.runtime.version} on {settings.profile.name}); "
            f"raise it{' in the profile' if from_profile else ''}.",
            ExitCode.BAD_PROFILE if from_profile else ExitCode.USAGE)


def check(model: str, settings: PackageSettings, *, context: int | None = None, measure: bool = True,
          input_spec: InputSpec | None = None, reporter: Reporter | None = None, allow_pickle: bool = False,
          stage_cache: StageCache | None = None, member_dir: Path | None = None) -> Context:
    """Estimate (and measure) MODEL's peak memory on the target; ctx.memory holds the verdict. With
    `member_dir` (one model of several), the staged folder, runnable, is kept there."""
    return _run(model, settings, CHECK_STAGES, reporter, input_spec=input_spec or InputSpec(), context=context,
                measure=measure, enforce_budget=False, allow_pickle=allow_pickle, stage_cache=stage_cache,
                member_dir=member_dir)
