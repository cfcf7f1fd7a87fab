"""mobile: the conversions the target's runtime needs before the model runs as the device runs it (ONNX Runtime
on phones: model.ort, packager/runtimes/onnxruntime.py; model.onnx as it is for a model with memory-mapped lookup
tables, packager/mobile.py loads_onnx); nothing for targets whose runtime loads the .onnx.

From here on the bundle's runner (verify, fit, the smoke test) loads what the conversion made (ctx.model_file).
"""

from __future__ import annotations

from pathlib import Path

import onnx

from packager.context import Context
from packager.estimate import table_file_bytes
from packager.runtimes import runtime_for


def run(ctx: Context) -> None:
    # Read here, not by the runtime: the runtimes sit below the estimate (packager/estimate.py imports them).
    ctx.mapped_files = mapped_files(ctx.packaged_model) if ctx.packaged_model and not ctx.components else {}
    runtime_for(ctx.profile).convert(ctx)


def mapped_files(model_path: Path) -> dict[str, int]:
    """The model's external data files that hold memory-mapped lookup tables -> the tables' bytes in each."""
    return table_file_bytes(onnx.load(model_path, load_external_data=False))
