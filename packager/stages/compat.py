"""compat: the packaged model against the runtime version the target pins (IR version, opsets,
operators, contrib operators included), before anything is verified or bundled."""

from __future__ import annotations

from packager.compat import check, lower_ir_version, read_model, require
from packager.context import Context


def run(ctx: Context) -> None:
    assert ctx.packaged_model is not None
    lowered = lower_ir_version(ctx.packaged_model, ctx.profile)
    result = check(read_model(ctx.packaged_model, f"the {ctx.recipe_name} model.onnx"), ctx.profile)
    ctx.compatibility = result.to_dict() | ({"ir_version_lowered": lowered} if lowered else {})
    require(result)
