"""quantize: apply the recipe (the profile's, or --recipe) to the fp32 reference."""

from __future__ import annotations

import shutil

from packager.context import Context
from packager.errors import ExitCode, PackagerError
from packager.calibration import calibration_inputs, unused_calibration
from packager.recipes import CALIBRATED, RECIPES, RecipeOptions


def run(ctx: Context) -> None:
    assert ctx.reference_model is not None
    model_dir = ctx.stage_dir / "model"
    model_dir.mkdir(parents=True)
    dest = model_dir / "model.onnx"
    for f in ctx.tokenizer_files:
        shutil.copyfile(f, model_dir / f.name)
    options = RecipeOptions(int4=ctx.profile.int4, progress=ctx.progress)
    if ctx.recipe_name in CALIBRATED:
        feeds, where = calibration_inputs(ctx, ctx.stage_dir)
        options = RecipeOptions(int4=ctx.profile.int4, calibration=feeds, calibration_source=where,
                                progress=ctx.progress)
    elif ctx.calibration is not None and not ctx.fit:  # --fit auto may try a calibrated recipe later
        raise unused_calibration(ctx.recipe_name)
    try:
        ctx.recipe = RECIPES[ctx.recipe_name](ctx.reference_model, dest, options)
    except PackagerError:
        raise
    except Exception as e:
        raise PackagerError(
            f"recipe {ctx.recipe_name} failed on this model ({type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}); "
            "try another recipe with --recipe (for example fp32).",
            ExitCode.TOOL_FAILED,
        ) from e
    if ctx.recipe.name == "fp32":
        # The reference's external data (if any) travels with it.
        for f in ctx.reference_model.parent.iterdir():
            if f.name != "model.onnx" and f.suffix not in (".json", ".txt") and f.is_file():
                shutil.copyfile(f, model_dir / f.name)
    ctx.packaged_model = dest
