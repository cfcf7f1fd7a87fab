"""compat: the packaged model against the runtime version the target pins (IR version, opsets,
operators, contrib operators included), before anything is verified or bundled. A multi-component
model checks each component; the record is the decoder's, with each component's under `components`."""

from __future__ import annotations

from pathlib import Path

from packager.compat import Compatibility, check, lower_ir_version, read_model, require
from packager.context import Context


def _one(ctx: Context, path: Path, what: str) -> tuple[Compatibility, dict]:
    lowered = lower_ir_version(path, ctx.profile)
    result = check(read_model(path, what), ctx.profile)
    return result, result.to_dict() | ({"ir_version_lowered": lowered} if lowered else {})


def run(ctx: Context) -> None:
    assert ctx.packaged_model is not None
    if not ctx.components:
        result, ctx.compatibility = _one(ctx, ctx.packaged_model, f"the {ctx.recipe_name} model.onnx")
        require(result)
        return
    records = {}
    for c in ctx.components:
        assert c.packaged is not None
        result, records[c.name] = _one(ctx, c.packaged, f"the {c.recipe_name} {c.packaged.name}")
        require(result)
    ctx.compatibility = records[ctx.components[-1].name] | {"components": records}
