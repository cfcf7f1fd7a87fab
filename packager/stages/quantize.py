"""quantize: apply the recipe (the profile's, or --recipe) to the fp32 reference."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path
from typing import Any

import onnx

from packager.calibration import calibration_inputs, unused_calibration
from packager.context import Component, Context
from packager.coverage import coverage_of, merge
from packager.errors import ExitCode, PackagerError
from packager.families import family_for
from packager.mixed import quantizations
from packager.model_files import external_data_files
from packager.recipes import RECIPES, calibrated, parse_recipe, searched
from packager.recipes.common import (
    RecipeOptions,
    RecipeResult,
    drop_unused_opsets,
    embedding_file,
    place_tables,
    table_locations,
)
from packager.recipes.nbits import find_tied_embedding
from packager.row_feed import feed_rows
from packager.runtimes import runtime_for


def run(ctx: Context) -> None:
    model_dir = ctx.stage_dir / "model"
    model_dir.mkdir(parents=True)
    for f in ctx.tokenizer_files:
        shutil.copyfile(f, model_dir / f.name)
    if runtime_for(ctx.profile).build(ctx, model_dir):   # onnxruntime-genai: its builder makes the model
        return
    assert ctx.reference_model is not None   # the export stage's, for every model that a recipe quantizes
    what = "an encoder-decoder" if ctx.components else f"a {ctx.io.kind} model"
    for name in parse_recipe(ctx.recipe_name).values():
        refusal = RECIPES[name].refuses(ctx.io.kind, what)
        if refusal is not None:
            raise refusal
    if ctx.components:
        _run_components(ctx, model_dir)
        return
    dest = model_dir / "model.onnx"
    options = RecipeOptions(int4=ctx.profile.int4, keep_8bit=ctx.keep_8bit, progress=ctx.progress,
                            nbits_dir=quantizations(ctx) if searched(ctx.recipe_name) else None)
    if RECIPES[ctx.recipe_name].needs_calibration:
        feeds, where = calibration_inputs(ctx, ctx.stage_dir)
        options = dataclasses.replace(options, calibration=feeds, calibration_source=where)
    elif ctx.calibration is not None and ctx.fit is None:  # --fit auto may try a calibrated recipe later
        raise unused_calibration(ctx.recipe_name)
    try:
        result = _apply(ctx.recipe_name, ctx.reference_model, dest, options, "this model")
    except PackagerError as e:
        if not (ctx.recipe_fallback and ctx.recipe_name != "fp32"
                and e.code in (ExitCode.BAD_INPUT, ExitCode.TOOL_FAILED)):
            raise
        result = _fall_back(ctx, dest, options, e)
    ctx.recipe = _finish(result, dest)
    if ctx.recipe.name == "fp32":
        # The reference's external data (if any) travels with it.
        for f in ctx.reference_model.parent.iterdir():
            if f.name != "model.onnx" and f.suffix not in (".json", ".txt") and f.is_file():
                shutil.copyfile(f, model_dir / f.name)
    keep_tables_mapped(ctx.reference_model, dest)
    if family_for(ctx.io.kind).generates:   # the rows as inputs, read by the decoder's loop a pass at a time
        feed_rows(dest)
    ctx.packaged_model = dest
    encoders = quantize_encoders(ctx, model_dir)
    if encoders:
        ctx.recipe = dataclasses.replace(ctx.recipe, params=ctx.recipe.params | {"encoders": encoders})


# The recipes an encoder takes when --recipe names one (as --recipe R gives an encoder-decoder's every component R);
# another (int4-mixed, int8-static: a decoder's search, the model's own calibration inputs) leaves it the profile's.
ENCODER_RECIPES = ("fp32", "fp16", "int8-dynamic", "int4")


def encoder_recipe(ctx: Context) -> str:
    return ctx.recipe_name if ctx.recipe_explicit and ctx.recipe_name in ENCODER_RECIPES else ctx.profile.recipe


def quantize_encoders(ctx: Context, model_dir: Path) -> dict[str, Any]:
    """A multimodal decoder's encoders (io.soft.encoders: loaded on demand by the loop), each at the profile's
    encoder recipe (`recipe`: int8-dynamic on the Pis, the phone and the Orin's CPU) or the one --recipe names, into
    model/<its file>; what each recipe did, by mode."""
    assert ctx.reference_model is not None
    done: dict[str, Any] = {}
    for mode, encoder in ((ctx.io.soft or {}).get("encoders") or {}).items():
        dest = model_dir / encoder["file"]
        dest.parent.mkdir(parents=True, exist_ok=True)
        recipe = encoder_recipe(ctx)
        ctx.progress(f"quantizing the {mode} encoder ({recipe})")
        source = ctx.reference_model.parent / encoder["file"]
        result = _apply(recipe, source, dest, RecipeOptions(int4=ctx.profile.int4, progress=ctx.progress),
                        f"the {mode} encoder")
        if result.name == "fp32":   # the graph as exported: its external data (past 2 GiB: E2B's audio) beside it
            for f in external_data_files(source, onnx.load(source, load_external_data=False)):
                shutil.copyfile(f, dest.parent / f.relative_to(source.resolve().parent))
        done[mode] = {"recipe": result.name, "quantized_nodes": result.quantized_nodes, "file": encoder["file"]}
    return done


def keep_tables_mapped(reference: Path, packaged: Path) -> None:
    """The reference's memory-mapped lookup tables (estimate.mapped_tables) each in its file again, whatever
    the recipe did with them; and a tied decoder's float embedding table in a mapped file of its own, where the
    lm_head keeps its own copy (the exporter's `<embedding>_transposed`; int4's recipe maps its copy itself,
    nbits.untie_embedding): the lookup then costs the rows the tokens read, not the table."""
    files = table_locations(onnx.load(reference, load_external_data=False))
    kept = onnx.load(packaged, load_external_data=False)
    tied = find_tied_embedding(kept, packaged.parent)
    if tied:
        files[next(n.input[0] for n in kept.graph.node if n.name == tied[0])] = embedding_file(packaged)
    if not files:
        return
    if all({e.key: e.value for e in t.external_data}.get("location") == files[t.name]
           for t in kept.graph.initializer if t.name in files) and all((packaged.parent / f).is_file()
                                                                       for f in files.values()):
        return   # fp32: the reference's files as they were
    place_tables(packaged, files)


def _fall_back(ctx: Context, dest: Path, options: RecipeOptions, refused: PackagerError) -> RecipeResult:
    """`packager check`: the fp32 model, which it can always package, in place of a recipe that cannot apply;
    the result's note says which recipe and why (check prints it with the estimate's notes)."""
    assert ctx.reference_model is not None
    asked, ctx.recipe_name = ctx.recipe_name, "fp32"
    result = RECIPES["fp32"](ctx.reference_model, dest, options)
    return dataclasses.replace(result, note=f"recipe {asked} cannot apply, so these are fp32's figures: "
                                            f"{refused.message}", extra={"instead_of": asked})


def _finish(result: RecipeResult, model: Path) -> RecipeResult:
    """The recipe's result with what it did to the model: the unused opset imports the quantizer declared
    dropped (a quantized model only; a copied one stays as it is), and the weight bytes at each precision."""
    dropped = drop_unused_opsets(model) if result.quantized_nodes else []
    extra = result.extra | ({"dropped_opset_imports": dropped} if dropped else {})
    return dataclasses.replace(result, extra=extra,
                               coverage=coverage_of(onnx.load(model, load_external_data=False)))


def _apply(recipe: str, src: Path, dest: Path, options: RecipeOptions, what: str) -> RecipeResult:
    try:
        return RECIPES[recipe](src, dest, options)
    except PackagerError:
        raise
    except Exception as e:
        raise PackagerError(
            f"recipe {recipe} failed on {what} ({type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}); "
            "try another recipe with --recipe (for example fp32).",
            ExitCode.TOOL_FAILED,
        ) from e


def _apply_merged(c: Component, options: RecipeOptions) -> RecipeResult:
    """fp16 or int8-dynamic for a merged decoder: its unmerged graphs converted one by one and merged
    again (the fp16 converter breaks the merged graph's If branches, leaving outer-scope values it renames
    dangling; the dynamic quantizer leaves the branches unquantized)."""
    assert c.packaged is not None
    try:
        merged = RECIPES[c.recipe_name].merged
        assert merged is not None
        return merged(c.parts, c.packaged, options)
    except PackagerError:
        raise
    except Exception as e:
        raise PackagerError(
            f"recipe {c.recipe_name} failed on the {c.name} ({type(e).__name__}: "
            f"{str(e).splitlines()[0][:300] if str(e) else ''}); give it another recipe, e.g. --recipe {c.name}=fp32.",
            ExitCode.TOOL_FAILED) from e


def _run_components(ctx: Context, model_dir: Path) -> None:
    """Each component with its own recipe (ctx.recipe_name: one for all, or NAME=R per component, as
    --fit auto and the export set it), into model/<its export's file name>. ctx.recipe sums them up
    for the readers of single-graph models; each component's own result is in its `recipe`."""
    chosen = parse_recipe(ctx.recipe_name)
    if calibrated(chosen):
        raise PackagerError(f"recipe {ctx.recipe_name}: {', '.join(calibrated(chosen))} calibrates on the model's "
                            "own inputs, which an encoder-decoder's decoder does not take from the samples; choose "
                            "int8-dynamic, int4, fp16 or fp32 for its components.", ExitCode.USAGE)
    if ctx.calibration is not None and ctx.fit is None:
        raise unused_calibration(ctx.recipe_name)
    options = RecipeOptions(int4=ctx.profile.int4, progress=ctx.progress)
    for c in ctx.components:
        c.recipe_name = chosen.get(c.name) or chosen.get("") or c.recipe_name
        c.packaged = model_dir / c.reference.name
        c.file = f"model/{c.reference.name}"
        if RECIPES[c.recipe_name].merged is not None and c.parts:
            c.recipe = _finish(_apply_merged(c, options), c.packaged)
        else:
            c.recipe = _finish(_apply(c.recipe_name, c.reference, c.packaged, options, f"the {c.name}"), c.packaged)
    ctx.packaged_model = ctx.components[-1].packaged
    ctx.model_file = ctx.components[-1].file
    ctx.recipe = RecipeResult(ctx.recipe_name, {"components": {c.name: dataclasses.asdict(c.recipe)
                                                               for c in ctx.components if c.recipe}},
                              sum(c.recipe.quantized_nodes for c in ctx.components if c.recipe),
                              coverage=merge([c.recipe.coverage for c in ctx.components if c.recipe]))
