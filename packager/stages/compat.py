"""compat: the packaged model against the runtime the target names and the version it pins (for ONNX
Runtime: IR version, opsets, operators, contrib operators included), before anything is verified or bundled.
A multi-component model checks each component; the record is the decoder's, with each component's under
`components`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from packager.compat import Compatibility, require
from packager.context import Context
from packager.runtimes import runtime_for


def _one(ctx: Context, path: Path, what: str) -> tuple[Compatibility, dict[str, Any]]:
    return runtime_for(ctx.profile).check_model(path, ctx.profile, what)


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
