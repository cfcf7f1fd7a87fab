"""The pipeline: the ordered list of stages, run over one Context in a private work folder."""

from __future__ import annotations

import contextlib
import dataclasses
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from packager.cache import StageCache
from packager.config import PackageSettings
from packager.context import Context, InputSpec, silent
from packager.errors import ExitCode, PackagerError
from packager.estimate import runtime_base
from packager.leftovers import sweep_run_leftovers, work_folder
from packager.progress import Reporter
from packager.recipes import CALIBRATED, MIXED, parse_recipe
from packager.stages import bundle, compat, export, fit, mobile, quantize, samples, source, verify
from packager.stages.bundle import check_output_dir

STAGES: list[tuple[str, Callable[[Context], None]]] = [
    ("source", source.run),
    ("export", export.run),
    ("quantize", quantize.run),
    ("compat", compat.run),
    ("mobile", mobile.run),      # the runtime's conversions (phones: model.ort), which the runner loads from here on
    ("samples", samples.run),
    ("verify", verify.run),
    ("fit", fit.run),
    ("bundle", bundle.run),
]


# `packager check`: what the model needs on the target, without verifying or bundling.
CHECK_STAGES = ("source", "export", "quantize", "mobile", "samples", "fit")

# The stages a recipe changes: --fit auto reruns them for each recipe it tries.
PER_RECIPE = ("quantize", "compat", "mobile", "samples", "verify", "fit")


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
    if not settings.recipe.origin.startswith("profile") and not set(parse_recipe(recipe_name).values()) & CALIBRATED:
        from packager.calibration import unused_calibration

        raise unused_calibration(recipe_name)


def _run(model: str, settings: PackageSettings, stages: tuple[str, ...], reporter: Reporter | None,
         **options: Any) -> Context:
    reporter = reporter or Reporter(quiet=True)
    with _workspace(model, settings, str(settings.recipe.value), "bundle" in stages, **options) as ctx:
        for stage_name in ("source", "export"):
            if stage_name in stages:
                _stage(ctx, reporter, stage_name)
        _recipe_stages(ctx, reporter, tuple(s for s in PER_RECIPE if s in stages))
        if "bundle" in stages:
            _stage(ctx, reporter, "bundle")
        elif ctx.member_dir is not None:   # `packager check` of several models: measured together next
            if not ctx.measure:   # measuring made it runnable already
                fit.runnable(ctx)
            shutil.copytree(ctx.stage_dir, ctx.member_dir)
    return ctx


def _recipe_stages(ctx: Context, reporter: Reporter, stages: tuple[str, ...]) -> None:
    """The stages a recipe changes. int4-mixed first finds the layers it keeps at 8 bits (_search_mixed)."""
    if ctx.recipe_name == MIXED and "verify" in stages:
        _search_mixed(ctx, reporter, stages)
        return
    for stage_name in stages:
        _stage(ctx, reporter, stage_name)
    if ctx.recipe_name == MIXED and ctx.memory:   # `packager check`: no verify, so no search
        ctx.memory["estimate"]["notes"].append(
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
    ctx.recipe = dataclasses.replace(ctx.recipe, extra=ctx.recipe.extra | {"search": search})
    if "fit" in stages:
        _stage(ctx, reporter, "fit")


def _bisect_mixed(ctx: Context, reporter: Reporter, judged: tuple[str, ...], int4_rejected: PackagerError) -> None:
    from packager import mixed

    search = ctx.mixed_search
    reporter.print("int4-mixed: int4 alone changes the answers; measuring each layer's sensitivity")
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
            _stage(ctx, reporter, stage_name)
    except PackagerError as e:
        if e.code != ExitCode.ACCURACY or raise_rejection:
            raise
        return e
    return None


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
            _stage(ctx, reporter, stage_name)
        _choose_recipe(ctx, reporter, settings.profile.fit_recipes_for(ctx.io["kind"]))
        _stage(ctx, reporter, "bundle")
    return ctx


# --fit auto shrinks a decoder's context by halving, down to this floor, under which it gives up:
# a deployment holding fewer tokens than this keeps too little of a conversation to be worth it.
MIN_CONTEXT = 256


def _choose_recipe(ctx: Context, reporter: Reporter, recipes: tuple[str, ...]) -> None:
    """--fit auto: the most precise recipe that fits the budget and passes verify. A decoder that no
    recipe fits at the deployment's context gets the largest context, halving down to MIN_CONTEXT,
    at which one fits (predicted from each recipe's measured peak, then measured), and there the
    most precise recipe that fits."""
    ctx.fit = {"mode": "auto", "tried": []}
    wanted = ctx.context
    shorter = _shorter_contexts(wanted) if ctx.io["kind"] == "decoder" and wanted else []
    predicted: dict[str, dict[int, int]] = {}  # recipe -> its peak at each shorter context
    for recipe in recipes:
        rejected = _try_recipe(ctx, reporter, recipe)
        if rejected is None:
            _chose(ctx, reporter, recipe, recipes)
            return
        if rejected.code == ExitCode.DOES_NOT_FIT and shorter:
            predicted[recipe] = fit.peaks_at(ctx, shorter)
    if predicted:
        ctx.fit["predicted_peak_bytes"] = {r: {str(c): b for c, b in p.items()} for r, p in predicted.items()}
    budget = ctx.profile.budget.memory_bytes
    for i, context in enumerate(shorter):
        for recipe in [r for r in recipes if r in predicted and predicted[r][context] <= budget]:
            # The work folder still holds the last recipe tried, verified (only fit rejected it): measure
            # it again at the shorter context; another recipe runs its stages again.
            fit_only = recipe == ctx.recipe_name
            ctx.context = context
            rejected = _try_recipe(ctx, reporter, recipe, ("fit",) if fit_only else PER_RECIPE)
            if rejected is None:
                _chose(ctx, reporter, recipe, recipes, wanted)
                return
            if rejected.code == ExitCode.DOES_NOT_FIT:  # the prediction was short: predict again from here
                predicted[recipe] |= fit.peaks_at(ctx, shorter[i + 1:])
            else:
                del predicted[recipe]
    tried = "; ".join(f"{t['recipe']}{_at(t)}: {t['outcome']}" for t in ctx.fit["tried"])
    shrunk = ""
    if predicted:
        least = min(p[MIN_CONTEXT] for p in predicted.values())
        shrunk = (f" at {wanted} tokens of context, nor at any shorter down to {MIN_CONTEXT} (peak there "
                  f"{least / 2**20:.0f} MiB at the least)")
    raise PackagerError(f"no recipe of {ctx.profile.name} fits and keeps the answers{shrunk} ({tried})",
                        ExitCode.DOES_NOT_FIT)


def _shorter_contexts(context: int) -> list[int]:
    """Halvings of `context` down to MIN_CONTEXT, and MIN_CONTEXT itself last."""
    found = []
    while context // 2 >= MIN_CONTEXT:
        context //= 2
        found.append(context)
    return found + [MIN_CONTEXT] if context > MIN_CONTEXT else found


def _try_recipe(ctx: Context, reporter: Reporter, recipe: str,
                stages: tuple[str, ...] = PER_RECIPE) -> PackagerError | None:
    """Run the recipe's stages at ctx.context and record the outcome: None when it fits and passes
    verify, else the verdict that rejects it (over budget, or answers changed too much)."""
    if stages[0] != "fit":
        ctx.recipe_name = recipe
        shutil.rmtree(ctx.stage_dir, ignore_errors=True)
    entry: dict[str, Any] = {"recipe": recipe, **({"context": ctx.context} if ctx.io["kind"] == "decoder" else {})}
    try:
        _recipe_stages(ctx, reporter, stages)
    except PackagerError as e:
        if e.code not in (ExitCode.DOES_NOT_FIT, ExitCode.ACCURACY):
            raise
        ctx.fit["tried"].append(entry | {"outcome": e.message})
        reporter.print(f"fit auto: {recipe}{_at(entry)} rejected: {e.message}")
        return e
    ctx.fit["tried"].append(entry | {"outcome": "fits and passes verify"})
    return None


def _at(entry: dict[str, Any]) -> str:
    return f" at {entry['context']} tokens" if "context" in entry else ""


def _chose(ctx: Context, reporter: Reporter, recipe: str, recipes: tuple[str, ...],
           shrunk_from: int | None = None) -> None:
    ctx.fit["chosen"] = recipe
    if ctx.io["kind"] == "decoder":
        ctx.fit["context"] = ctx.context
    if shrunk_from is not None:
        budget = ctx.profile.budget.memory_bytes / 2**20
        ctx.fit["why"] = (f"no recipe fits {shrunk_from} tokens of context in {budget:.0f} "
                          f"MiB; {ctx.context} is the largest context, halving from {shrunk_from} to no less than "
                          f"{MIN_CONTEXT}, at which one does, and {recipe} the most precise recipe that fits there")
    elif recipe == recipes[0]:
        ctx.fit["why"] = "the most precise recipe that fits"
    else:
        ctx.fit["why"] = (f"the most precise recipe that fits and keeps the answers; "
                          f"{', '.join(t['recipe'] for t in ctx.fit['tried'][:-1])} did not")
    reporter.print(f"fit auto: chose {recipe}{_at(ctx.fit)}: {ctx.fit['why']}")


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


CACHE_NOTES = {"hit": "cache hit", "corrupt": "damaged cache entry rebuilt"}


def _stage(ctx: Context, reporter: Reporter, name: str) -> None:
    with reporter.stage(name, ctx.timings) as step:
        ctx.progress = step.update   # the stage's word on where it is (minutes-long stages)
        try:
            dict(STAGES)[name](ctx)
        finally:
            ctx.progress = silent
        step.note = CACHE_NOTES.get(ctx.cache.get(name, ""), "")
    for note in ctx.cache_notes:
        reporter.print(note)
    ctx.cache_notes.clear()


def check(model: str, settings: PackageSettings, *, context: int | None = None, measure: bool = True,
          input_spec: InputSpec | None = None, reporter: Reporter | None = None, allow_pickle: bool = False,
          stage_cache: StageCache | None = None, member_dir: Path | None = None) -> Context:
    """Estimate (and measure) MODEL's peak memory on the target; ctx.memory holds the verdict. With
    `member_dir` (one model of several), the staged folder, runnable, is kept there."""
    return _run(model, settings, CHECK_STAGES, reporter, input_spec=input_spec or InputSpec(), context=context,
                measure=measure, enforce_budget=False, allow_pickle=allow_pickle, stage_cache=stage_cache,
                member_dir=member_dir)
