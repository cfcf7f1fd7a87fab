"""The stages in their order, and running one of them over a Context with its progress line."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from packager.cache import open_cache
from packager.context import Context, silent
from packager.profiles import Profile
from packager.progress import Reporter
from packager.stages import bundle, compat, export, fit, mobile, quantize, samples, source, verify

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


CACHE_NOTES = {"hit": "cache hit", "corrupt": "damaged cache entry rebuilt"}


# Stages only some targets have: the others neither run them nor show a line (or a time) for them.
APPLIES: dict[str, Callable[[Context], bool]] = {"mobile": lambda ctx: ctx.profile.mobile is not None}


def run_stage(ctx: Context, reporter: Reporter, name: str) -> None:
    applies = APPLIES.get(name)
    if applies is not None and not applies(ctx):
        return
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


def export_reference(spec: str, profile: Profile, tmp: Path) -> Path:
    """The fp32 ONNX export of a Hugging Face folder or sample, as `packager package` makes it (and from the same
    stage cache), at the opset the profile's runtime takes (`packager inspect`)."""
    ctx = Context(spec, profile, "fp32", tmp, tmp / "out", stage_cache=open_cache(True))
    source.run(ctx)
    export.run(ctx)
    return fp32_reference(ctx)


def fp32_reference(ctx: Context) -> Path:
    """The fp32 export, made now where the export stage left it out (a model its runtime builds from the source,
    onnxruntime-genai: int4-mixed's layer search quantizes it, and `inspect` reads it)."""
    if ctx.reference_model is None:
        export.reference(ctx)
    assert ctx.reference_model is not None
    return ctx.reference_model
