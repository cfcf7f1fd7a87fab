#!/usr/bin/env python3
"""Estimate against measurement: packager's static memory estimate next to the peak measured in
a fresh process, for every model the project has, with the error in %.

    python scripts/bench_memory.py [--only NAME ...]

Goal: the measurement inside [low, high] and every row within 10% of it. A row's error is the
distance from the measurement to the nearer bound (0 when inside), in % of the measurement.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from packager.config import resolve_package_settings  # noqa: E402
from packager.context import InputSpec  # noqa: E402
from packager.pipeline import package  # noqa: E402

MiB = 2**20


def matmul_chain(folder: Path, layers: int, width: int, external: bool) -> Path:
    """A generated model whose weights dominate: `layers` fp32 MatMuls of width x width."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    nodes, inits, x = [], [], "x"
    for i in range(layers):
        inits.append(numpy_helper.from_array((rng.standard_normal((width, width)) * 0.02).astype(np.float32), f"w{i}"))
        nodes.append(helper.make_node("MatMul", [x, f"w{i}"], [f"h{i}"]))
        x = f"h{i}"
    graph = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", width])],
                              [helper.make_tensor_value_info(x, TensorProto.FLOAT, ["batch", width])], inits)
    path = folder / ("chain_ext.onnx" if external else "chain.onnx")
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path,
              save_as_external_data=external, location="chain_ext.onnx.data" if external else None)
    return path


def rows(tmp: Path) -> list[tuple[str, str, str]]:
    """(label, model, recipe)"""
    (tmp / "inline").mkdir()
    (tmp / "ext").mkdir()
    chain = matmul_chain(tmp / "inline", 16, 2048, external=False)      # 256 MiB inline
    chain_ext = matmul_chain(tmp / "ext", 16, 2048, external=True)      # 256 MiB external data
    return [
        ("minilm fp32", "sample:minilm", "fp32"),
        ("minilm int8", "sample:minilm", "int8-dynamic"),
        ("silero-vad", "sample:silero-vad", "fp32"),
        ("chain 256 MiB fp32", str(chain), "fp32"),
        ("chain 256 MiB int8", str(chain), "int8-dynamic"),
        ("chain 256 MiB external", str(chain_ext), "fp32"),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", help="labels to run (substring match)")
    parser.add_argument("--target", default="rpi5")
    args = parser.parse_args()
    header = f"{'model':<24}{'low':>8}{'high':>8}{'measured':>10}{'load':>8}{'run':>8}{'error':>8}  largest parts (MiB)"
    print(header)
    print("-" * len(header))
    with tempfile.TemporaryDirectory() as tmp:
        for label, model, recipe in rows(Path(tmp)):
            if args.only and not any(o in label for o in args.only):
                continue
            settings = resolve_package_settings({"target": args.target, "recipe": recipe, "out": str(Path(tmp) / "dist"),
                                                 "budget": "16GiB"})
            ctx = package(model, settings, input_spec=InputSpec(shapes={"x": (1, 2048)}) if "chain" in label else None)
            mem = ctx.memory
            est = mem["estimate"]
            low, high, peak = est["low_bytes"], est["high_bytes"], mem["measured_peak_bytes"]
            error = 0.0 if low <= peak <= high else min(abs(peak - low), abs(peak - high)) / peak * 100
            parts = ", ".join(f"{k} {v / MiB:.0f}" for k, v in sorted(est["breakdown"].items(), key=lambda kv: -kv[1])[:4])
            print(f"{label:<24}{low / MiB:>8.0f}{high / MiB:>8.0f}{peak / MiB:>10.0f}{mem['load_peak_bytes'] / MiB:>8.0f}"
                  f"{mem['run_peak_bytes'] / MiB:>8.0f}{error:>7.1f}%  {parts}", flush=True)


if __name__ == "__main__":
    main()
