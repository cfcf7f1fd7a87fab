"""The runtimes' steps that take the run's Context (packager/runtimes/ names them "module:function", as the
families name theirs: the runtimes sit below the Context and the exporter environments these need).

    onnxruntime_runner(ctx)     verify's packaged side: run.py's Runner in this process
    genai_build(ctx, ...)       onnxruntime-genai's model builder, in the `genai` exporter environment
    genai_python()              that environment's interpreter (it has the pinned onnxruntime-genai)
    genai_runner(ctx)           verify's packaged side for genai: the bundle's code in a child of that interpreter
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from packager import exporter_envs
from packager.context import Context
from packager.manifest import runtime_spec
from packager.recipes.common import RecipeResult
from packager.runtime_files import copy_runtime, runner
from packager.runtimes.genai import tune
from packager.runtimes.genai_host import ChildDecoder, ChildRunner

BUILDER = "onnxruntime_genai.models.builder"


def onnxruntime_runner(ctx: Context) -> Any:
    """The packaged model as run.py loads it, on this host's CPU."""
    spec = runtime_spec(ctx) | {"providers": ["CPUExecutionProvider"], "provider_options": {}}
    return runner().Runner(ctx.stage_dir, spec, log_level=4)


def genai_python() -> Path:
    exporter_envs.ensure(exporter_envs.GENAI)
    return exporter_envs.GENAI.python


def genai_build(ctx: Context, model_dir: Path, precision: str, options: tuple[str, ...]) -> None:
    """`model_dir` as the builder makes it from the source folder, tuned to the profile; ctx.packaged_model and
    ctx.recipe say so."""
    assert ctx.source is not None
    out = ctx.work_dir / "genai-build"
    shutil.rmtree(out, ignore_errors=True)
    args = ["-i", str(ctx.source.path), "-o", str(out), "-p", precision, "-e", "cpu",
            "-c", str(ctx.work_dir / "genai-cache"), "--extra_options", *options]
    ctx.progress("building the onnxruntime-genai model")
    exporter_envs.run(exporter_envs.GENAI, BUILDER, args, ctx.progress)
    tune(out / "genai_config.json", ctx.profile)
    for f in sorted(out.iterdir()):
        if f.is_file():
            shutil.copyfile(f, model_dir / f.name)
    shutil.rmtree(out, ignore_errors=True)
    ctx.packaged_model = model_dir / "model.onnx"
    ctx.recipe = RecipeResult(ctx.recipe_name, {"builder": BUILDER, "precision": precision, "execution_provider": "cpu",
                                                "extra_options": list(options)},
                              0, note=f"built by {BUILDER} (onnxruntime-genai {ctx.profile.runtime.version})")


def genai_runner(ctx: Context) -> ChildRunner:
    code = ctx.work_dir / "genai-runner"
    shutil.rmtree(code, ignore_errors=True)
    code.mkdir(parents=True)
    copy_runtime(code, ctx.profile)
    return ChildRunner(ChildDecoder(str(genai_python()), code, ctx.stage_dir, runtime_spec(ctx)))
