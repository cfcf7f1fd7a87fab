"""The pipeline: the ordered list of stages, run over one Context in a private work folder."""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from packager.bundle_files import check_output_dir
from packager.calibration import unused_calibration
from packager.config import PackageSettings
from packager.context import Context
from packager.errors import ExitCode, PackagerError
from packager.estimate import runtime_base
from packager.evaluation import read_cases
from packager.families import family_for
from packager.fit_auto import choose_recipe, default_recipe
from packager.leftovers import sweep_run_leftovers, work_folder
from packager.mixed_search import recipe_stages
from packager.options import PackageOptions
from packager.progress import Reporter
from packager.recipes import calibrated, parse_recipe
from packager.samples import resolve_eval
from packager.signing import load_private_key
from packager.stage_runner import CHECK_STAGES, PER_RECIPE, STAGES, run_stage
from packager.stages import fit

# The options of a caller of the pipeline itself that gives none (a test, a script): the defaults, without
# the stage cache, which is the API's and the CLI's default and not the pipeline's.
DIRECT = PackageOptions(cache=False)


@contextlib.contextmanager
def _workspace(model: str, settings: PackageSettings, recipe_name: str, options: PackageOptions, bundles: bool,
               **run: Any) -> Iterator[Context]:
    """Checks that fail before any work, a private work folder, and its removal however the run ends.
    `run`: the Context's fields that are the pipeline's, not the user's (enforce_budget, member_dir ...)."""
    parse_recipe(recipe_name)  # an unknown recipe fails here; unknown component names once the export names them
    check_budget(settings)
    _check_calibration(options.calibration, recipe_name, settings)
    if bundles:
        check_output_dir(settings.out.value)  # before minutes of work, not after
    sweep_run_leftovers(settings.out.value if bundles else None)
    work_dir = work_folder("work")
    try:
        explicit = not settings.recipe.origin.startswith("profile")
        yield Context(model, settings.profile, recipe_name, work_dir, settings.out.value, options=options,
                      recipe_explicit=explicit, stage_cache=options.stage_cache(), **run)
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
        raise unused_calibration(recipe_name)


def _run(model: str, settings: PackageSettings, options: PackageOptions, stages: tuple[str, ...],
         reporter: Reporter | None, **run: Any) -> Context:
    reporter = reporter or Reporter(quiet=True)
    with _workspace(model, settings, str(settings.recipe.value), options, "bundle" in stages, **run) as ctx:
        for stage_name in ("source", "export"):
            if stage_name in stages:
                run_stage(ctx, reporter, stage_name)
        if "verify" in stages and not ctx.recipe_explicit and not ctx.components:
            default_recipe(ctx, reporter)   # a default that verify rejects falls back to a more precise recipe
        else:
            recipe_stages(ctx, reporter, tuple(s for s in PER_RECIPE if s in stages))
        if ctx.memory is not None and ctx.recipe is not None and "instead_of" in ctx.recipe.extra:
            ctx.memory.estimate.notes.append(ctx.recipe.note)   # the recipe check could not apply, and why
        if "bundle" in stages:
            run_stage(ctx, reporter, "bundle")
        elif ctx.member_dir is not None:   # `packager check` of several models: measured together next
            if not ctx.measure:   # measuring made it runnable already
                fit.runnable(ctx)
            shutil.copytree(ctx.stage_dir, ctx.member_dir)
    return ctx


def package(model: str, settings: PackageSettings, options: PackageOptions | None = None, *,
            reporter: Reporter | None = None, member_dir: Path | None = None) -> Context:
    """Package MODEL for the settings' target into <out>/<name>-<target>.tar.gz; raises PackagerError.

    With `options.fit` "auto", the recipe is the first of the profile's `fit_recipes` (most precise
    first) that fits the budget and passes verify; the export runs once for all of them. With
    `options.sign` (an Ed25519 private key), the bundle's manifest is signed (packager/signing.py).
    `options.cache` says where the export comes from (and goes to) (packager/cache.py). With
    `options.adapter` (a PEFT LoRA folder, packager/adapter.py), it is merged into the weights before
    export; with `options.eval_file` (JSONL cases, packager/evaluation.py), verify gates on the user's
    own cases. With `member_dir` (one model of several, packager/suite.py), the finished folder goes
    there, not into an archive."""
    options = options or DIRECT
    eval_file = None
    if options.eval_file is not None:
        eval_file = resolve_eval(options.eval_file)
    if options.sign is not None:
        load_private_key(options.sign)  # a bad key fails before minutes of work, not after
    eval_cases: list[dict[str, Any]] = []
    if eval_file is not None:
        _, eval_cases = read_cases(eval_file)  # a malformed file fails before the export, not after
    run: dict[str, Any] = {"eval_file": eval_file, "eval_cases": eval_cases, "member_dir": member_dir}
    if not options.fit_auto:
        return _run(model, settings, options, tuple(s for s, _ in STAGES), reporter, **run)
    reporter = reporter or Reporter(quiet=True)
    with _workspace(model, settings, settings.profile.recipe, options, True, **run) as ctx:
        for stage_name in ("source", "export"):
            run_stage(ctx, reporter, stage_name)
        # ctx.profile: the profile as export applied it (a decoder may have moved to [decoder_runtime])
        choose_recipe(ctx, reporter, ctx.profile.fit_recipes_for(family_for(ctx.io.kind).context_sized))
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


def check(model: str, settings: PackageSettings, options: PackageOptions | None = None, *,
          reporter: Reporter | None = None, member_dir: Path | None = None) -> Context:
    """Estimate (and, unless `options.measure` is False, measure) MODEL's peak memory on the target;
    ctx.memory holds the verdict. With `member_dir` (one model of several), the staged folder, runnable,
    is kept there."""
    return _run(model, settings, options or DIRECT, CHECK_STAGES, reporter, enforce_budget=False,
                recipe_fallback=True, member_dir=member_dir)
