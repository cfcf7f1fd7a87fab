"""verify: run the fp32 reference and the packaged model on the same samples and compare.

The model's family judges them (packager/families/verification.py): outputs by cosine, generations by token
agreement. The reference's outputs become the bundle's expected outputs, which the device's smoke test holds
its own answers to.
"""

from __future__ import annotations

from packager.context import Context
from packager.device_code import runner
from packager.families import family_for
from packager.runtimes import runtime_for


def run(ctx: Context) -> None:
    ctx.progress(f"loading the {ctx.recipe_name} model")
    packaged = runtime_for(ctx.profile).host_runner(ctx)
    ctx.progress("loading the fp32 reference")
    reference = runtime_for(ctx.profile).host_reference(ctx)   # the fp32 export, or the model itself (genai)
    family_for(ctx.io.kind).verify(ctx, runner(), reference, packaged)
