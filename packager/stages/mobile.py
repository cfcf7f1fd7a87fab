"""mobile: the conversions the target's runtime needs before the model runs as the device runs it (ONNX Runtime
on phones: model.ort, packager/runtimes/onnxruntime.py); nothing for targets whose runtime loads the .onnx.

From here on the bundle's runner (verify, fit, the smoke test) loads what the conversion made (ctx.model_file).
"""

from __future__ import annotations

from packager.context import Context
from packager.runtimes import runtime_for


def run(ctx: Context) -> None:
    runtime_for(ctx.profile).convert(ctx)
