"""Graphs from other exporters made quantizable: weights that the graph computes from constants turned into the
stored initializers the quantizers look for.

onnxruntime's quantizers quantize a Conv, MatMul or Gemm whose weight is an initializer; they refuse (dynamic:
`ValueError: Expected conv2d_394.w_0 to be an initializer`) or skip (static, and dynamic where the weight is a
Constant node) one whose weight comes out of another node. paddle2onnx keeps every weight in a Constant node;
other exporters put an Identity (a weight shared by two layers) or a Cast (weights stored in fp16) in between.
onnxruntime's own pre-processing (`quant_pre_process`: its basic graph optimizations, which fold such chains
into initializers, then onnx shape inference) rewrites them. It runs only on those graphs, so that a model the
quantizers take as it is comes out of them as before. Symbolic shape inference is skipped: it stops at
paddle2onnx's open dimensions ("Incomplete symbolic shape inference") and the dynamic quantizer needs none.
Over 2 GiB the optimizer cannot hold the model (onnxruntime's documented limit): such a graph is left as it is.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import onnx

from packager.errors import ExitCode, PackagerError

# Operators the quantizers quantize by their weight (input 1); Gather by its table (input 0).
_WEIGHT_INPUT = {"Conv": 1, "ConvTranspose": 1, "MatMul": 1, "Gemm": 1, "Gather": 0}
# Nodes that hand a constant on unchanged or converted: a weight behind a chain of them is a constant too.
_PASS_THROUGH = {"Identity", "Cast"}


def hidden_weights(model: onnx.ModelProto) -> list[str]:
    """The weights of the main graph's quantizable nodes that a Constant node, or an Identity or Cast of a
    constant, produces instead of an initializer."""
    stored = {i.name for i in model.graph.initializer}
    producer = {out: n for n in model.graph.node for out in n.output}

    def constant(name: str, depth: int = 0) -> bool:
        node = producer.get(name)
        if node is None or depth > 8:
            return name in stored
        if node.op_type == "Constant":
            return True
        return node.op_type in _PASS_THROUGH and constant(node.input[0], depth + 1)

    found = []
    for node in model.graph.node:
        index = _WEIGHT_INPUT.get(node.op_type)
        if index is None or len(node.input) <= index:
            continue
        name = node.input[index]
        if name not in stored and name in producer and constant(name):
            found.append(name)
    return found


def prepare(src: Path, tmp: Path, external: bool) -> tuple[Path, dict[str, Any]]:
    """The model to quantize (`src`, or its pre-processed copy in `tmp`) and what was done, for the recipe's
    params: {} when the graph needed nothing (the params of a model quantized as before stay as they were)."""
    hidden = hidden_weights(onnx.load(src, load_external_data=False))
    if not hidden:
        return src, {}
    if external:
        return src, {"prepared": {"applied": False, "weights_computed_in_graph": len(hidden),
                                  "why": "model over 2 GiB, which onnxruntime's optimizer cannot hold"}}
    from onnxruntime.quantization import quant_pre_process

    out = tmp / "prepared.onnx"
    quant_pre_process(src, out, skip_symbolic_shape=True)
    left = hidden_weights(onnx.load(out, load_external_data=False))
    return out, {"prepared": {"applied": True, "weights_computed_in_graph": len(hidden), "left": len(left),
                              "tool": "onnxruntime.quantization.quant_pre_process (graph optimizations, onnx "
                                      "shape inference)"}}


def refusal(recipe: str, model: Path, error: Exception) -> PackagerError | None:
    """The bad-input error for a quantizer that failed on `model` because weights are still computed in its
    graph (folding could not store them), or None: the failure is the tool's."""
    hidden = hidden_weights(onnx.load(model, load_external_data=False))
    if not hidden:
        return None
    said = str(error).strip().splitlines()[0][:200] if str(error).strip() else type(error).__name__
    return PackagerError(f"recipe {recipe} cannot quantize this model: {len(hidden)} of its weights ({hidden[0]} the "
                         f"first) are computed in the graph instead of stored, which the quantizer refuses ({said}); "
                         "package it with --recipe fp32 or fp16, or re-export it with its weights stored.",
                         ExitCode.BAD_INPUT)
