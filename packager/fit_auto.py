"""--fit auto: the most precise of the profile's recipes that fits the budget and passes verify; for a decoder
that none fits at the deployment's context, the same with the smallest KV cache its runtime runs (onnxruntime-genai:
int8), then the largest shorter context at which one does. And the profile's default recipe (no --recipe, no --fit),
which verify rejected: the next more precise of the profile's recipes that keeps the answers (default_recipe)."""

from __future__ import annotations

import shutil
from typing import Any

from packager.context import Context
from packager.errors import ExitCode, PackagerError
from packager.families import family_for
from packager.labels import quantized_nothing
from packager.mixed_search import recipe_stages
from packager.profiles import Profile
from packager.progress import Reporter
from packager.recipes import searched
from packager.records import Fit
from packager.runtimes import runtime_for
from packager.stage_runner import PER_RECIPE, run_stage
from packager.stages import fit

# --fit auto shrinks a decoder's context by halving, down to this floor, under which it gives up:
# a deployment holding fewer tokens than this keeps too little of a conversation to be worth it.
MIN_CONTEXT = 256


def choose_recipe(ctx: Context, reporter: Reporter, recipes: tuple[str, ...]) -> None:
    """--fit auto: the most precise recipe that fits the budget and passes verify. A decoder that no recipe fits
    at the deployment's context gets, in this order: the recipes its memory rejected again with the runtime's
    smallest KV cache (Runtime.smaller_kv_cache), a lever that keeps the whole context; then the largest context,
    halving down to MIN_CONTEXT, at which one fits (predicted from each recipe's measured peak, with the smaller
    cache where that kept the answers, then measured), and there the most precise recipe that fits."""
    record = ctx.fit = Fit()
    wanted = ctx.context
    sized = family_for(ctx.io.kind).context_sized
    shorter = _shorter_contexts(wanted) if sized and wanted else []
    predicted: dict[str, dict[int, int]] = {}  # recipe -> its peak at each shorter context
    measured_with: dict[str, Profile] = {}     # recipe -> the profile (KV cache) its prediction was measured with
    refused: list[PackagerError] = []  # recipes that cannot make this graph (exit 5): the next one may
    over: list[str] = []               # recipes rejected for memory at the wanted context
    for recipe in recipes:
        rejected = _try_recipe(ctx, reporter, recipe)
        if rejected is None:
            _chose(ctx, reporter, recipe, recipes)
            return
        if rejected.code == ExitCode.BAD_INPUT:
            refused.append(rejected)
        if rejected.code == ExitCode.DOES_NOT_FIT:
            over.append(recipe)
            if shorter:
                predicted[recipe], measured_with[recipe] = fit.peaks_at(ctx, shorter), ctx.profile
    if len(refused) == len(recipes):
        raise refused[0]  # no recipe takes the graph: the input's fault, as one recipe would have said
    # --kv-bits chose the cache: the lever is the user's
    chosen = ctx.options.kv_bits is not None
    lever = runtime_for(ctx.profile).smaller_kv_cache(ctx.profile) if sized and wanted and over and not chosen else None
    if lever is not None:
        ctx.profile, kv = lever
        for recipe in over:
            rejected = _try_recipe(ctx, reporter, recipe, kv=kv)
            if rejected is None:
                record.kv_cache = kv
                _chose(ctx, reporter, recipe, recipes)
                return
            if rejected.code == ExitCode.DOES_NOT_FIT and shorter:   # else the float cache's prediction stands
                predicted[recipe], measured_with[recipe] = fit.peaks_at(ctx, shorter), ctx.profile
    if predicted:
        record.predicted_peak_bytes = {r: {str(c): b for c, b in p.items()} for r, p in predicted.items()}
    budget = ctx.profile.budget.memory_bytes
    for i, context in enumerate(shorter):
        for recipe in [r for r in recipes if r in predicted and predicted[r][context] <= budget]:
            # The work folder still holds the last recipe tried, verified (only fit rejected it): measure
            # it again at the shorter context; another recipe, or another cache, runs its stages again.
            fit_only = recipe == ctx.recipe_name and measured_with[recipe] is ctx.profile
            ctx.profile, ctx.context = measured_with[recipe], context
            cache = lever[1] if lever is not None and ctx.profile is lever[0] else None
            rejected = _try_recipe(ctx, reporter, recipe, ("fit",) if fit_only else PER_RECIPE, cache)
            if rejected is None:
                record.kv_cache = cache
                _chose(ctx, reporter, recipe, recipes, wanted)
                return
            if rejected.code == ExitCode.DOES_NOT_FIT:  # the prediction was short: predict again from here
                predicted[recipe] |= fit.peaks_at(ctx, shorter[i + 1:])
            else:
                del predicted[recipe]
    tried = "; ".join(f"{t['recipe']}{_at(t.get('context'), t.get('kv_cache'))}: {t['outcome']}"
                      for t in record.tried)
    shrunk = ""
    if predicted:
        least = min(p[MIN_CONTEXT] for p in predicted.values())
        shrunk = (f" at {wanted} tokens of context, nor at any shorter down to {MIN_CONTEXT} (peak there "
                  f"{least / 2**20:.0f} MiB at the least)")
    raise PackagerError(f"no recipe of {ctx.profile.name} fits and keeps the answers{shrunk} ({tried})",
                        ExitCode.DOES_NOT_FIT)


def default_recipe(ctx: Context, reporter: Reporter) -> None:
    """The recipe stages at the profile's default recipe (no --recipe). When verify rejects it (exit 4), the
    profile's more precise fit recipes, nearest first, until one keeps the answers: the default is the profile's
    guess for a kind of model, and a model it does not suit (a text detector whose int8 map drifts) still
    packages, at a recipe verify passed, with the rejection in ctx.fit. An asked-for recipe (--recipe), a decoder's
    and a default the profile lists no more precise recipe for fail as they did."""
    context_sized = family_for(ctx.io.kind).context_sized
    recipes = ctx.profile.fit_recipes_for(context_sized)
    default = ctx.recipe_name
    # Not for decoders: their default already searches its 8-bit layers (int4-mixed), and a more precise one is
    # several times the memory and minutes more export, which --fit auto weighs against the budget.
    fallbacks = tuple(reversed(recipes[:recipes.index(default)])) if default in recipes and not context_sized else ()
    try:
        recipe_stages(ctx, reporter, PER_RECIPE)
        return
    except PackagerError as e:
        if e.code != ExitCode.ACCURACY or not fallbacks:
            raise
        rejected = e
    record = ctx.fit = Fit(mode="default", tried=[{"recipe": default, "outcome": rejected.message}])
    reporter.print(f"recipe: {default}, {ctx.profile.name}'s default, rejected: {rejected.message}")
    last = rejected
    for recipe in fallbacks:
        failed = _try_recipe(ctx, reporter, recipe)
        if failed is None:
            record.chosen = recipe
            record.why = (f"{ctx.profile.name}'s default recipe {default} changes the answers too much on this "
                          f"model; {recipe} is the next more precise of its recipes ({', '.join(recipes)}) and "
                          "keeps them")
            reporter.print(f"recipe: chose {recipe}: {record.why}")
            return
        last = failed
        if failed.code != ExitCode.ACCURACY:
            break
    tried = "; ".join(f"{t['recipe']}: {t['outcome']}" for t in record.tried)
    raise PackagerError(f"{ctx.profile.name}'s default recipe {default} changes the answers too much on this model, "
                        f"and no more precise one of its recipes packages it ({tried})", last.code)


def _shorter_contexts(context: int) -> list[int]:
    """Halvings of `context` down to MIN_CONTEXT, and MIN_CONTEXT itself last."""
    found = []
    while context // 2 >= MIN_CONTEXT:
        context //= 2
        found.append(context)
    return found + [MIN_CONTEXT] if context > MIN_CONTEXT else found


def _try_recipe(ctx: Context, reporter: Reporter, recipe: str, stages: tuple[str, ...] = PER_RECIPE,
                kv: str | None = None) -> PackagerError | None:
    """Run the recipe's stages at ctx.context (with the KV cache `kv` that ctx.profile sets, when --fit auto chose it)
    and record the outcome: None when it fits and passes verify, else the verdict that rejects it (over budget, or
    answers changed too much)."""
    if stages[0] != "fit":
        ctx.recipe_name = recipe
        shutil.rmtree(ctx.stage_dir, ignore_errors=True)
    assert ctx.fit is not None
    sized = family_for(ctx.io.kind).context_sized
    entry: dict[str, Any] = {"recipe": recipe, **({"context": ctx.context} if sized else {}),
                             **({"kv_cache": kv} if kv else {})}
    try:
        if stages[0] == "quantize" and ctx.fit.tried and not searched(recipe):
            run_stage(ctx, reporter, "quantize")
            if ctx.recipe is not None and quantized_nothing(recipe, ctx.recipe.coverage):
                return _skip(ctx, reporter, entry)
            stages = stages[1:]
        recipe_stages(ctx, reporter, stages)
    except PackagerError as e:
        if e.code not in (ExitCode.DOES_NOT_FIT, ExitCode.ACCURACY, ExitCode.BAD_INPUT):
            raise
        skipped = e.code == ExitCode.BAD_INPUT
        verdict = "skipped (it cannot make this graph), trying the next" if skipped else "rejected"
        ctx.fit.tried.append(entry | {"outcome": f"skipped: {e.message}" if skipped else e.message})
        reporter.print(f"{_search_name(ctx.fit)}: {recipe}{_at(entry.get('context'), kv)} {verdict}: {e.message}")
        return e
    ctx.fit.tried.append(entry | {"outcome": "fits and passes verify"})
    return None


def _skip(ctx: Context, reporter: Reporter, entry: dict[str, Any]) -> PackagerError:
    """A recipe that found nothing to quantize is the model the more precise recipes already tried: not a
    smaller candidate."""
    assert ctx.fit is not None and ctx.recipe is not None
    outcome = (f"skipped: found nothing to quantize, so it is the same model as "
               f"{next(iter(ctx.recipe.coverage['bytes']))}, already tried")
    ctx.fit.tried.append(entry | {"outcome": outcome})
    reporter.print(f"{_search_name(ctx.fit)}: {entry['recipe']}{_at(entry.get('context'), entry.get('kv_cache'))} "
                   f"{outcome}")
    return PackagerError(outcome, ExitCode.USAGE)  # not DOES_NOT_FIT: no shorter context makes it a candidate


def _search_name(record: Fit) -> str:
    return "fit auto" if record.mode == "auto" else "recipe"


def _at(context: int | None, kv: str | None = None) -> str:
    return (f" at {context} tokens" if context is not None else "") + (f" with an {kv} KV cache" if kv else "")


def _chose(ctx: Context, reporter: Reporter, recipe: str, recipes: tuple[str, ...],
           shrunk_from: int | None = None) -> None:
    record = ctx.fit
    assert record is not None
    record.chosen = recipe
    if family_for(ctx.io.kind).context_sized:
        record.context = ctx.context
    kv = record.kv_cache
    cache = f" with an {kv} KV cache" if kv else ""
    levered = " (nor with the runtime's smallest KV cache)" if any(t.get("kv_cache") for t in record.tried) else ""
    if shrunk_from is not None:
        budget = ctx.profile.budget.memory_bytes / 2**20
        record.why = (f"no recipe fits {shrunk_from} tokens of context in {budget:.0f} MiB"
                      f"{levered}; {ctx.context} is the "
                      f"largest context, halving from {shrunk_from} to no less than {MIN_CONTEXT}, at which one "
                      f"does, and {recipe}{cache} the most precise recipe that fits there")
    elif kv:
        record.why = (f"no recipe fits {ctx.context} tokens of context with the profile's KV cache; {recipe} is the "
                      f"most precise that fits and keeps the answers with an {kv} one, the runtime's smallest")
    elif recipe == recipes[0]:
        record.why = "the most precise recipe that fits"
    else:
        record.why = (f"the most precise recipe that fits and keeps the answers; "
                      f"{', '.join(t['recipe'] for t in record.tried[:-1])} did not")
    reporter.print(f"fit auto: chose {recipe}{_at(record.context, kv)}: {record.why}")
