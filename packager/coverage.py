"""What a recipe quantized: the model's weight bytes at each precision, read from the graph's initializers (and
Constant nodes' tensors) and the op types that consume them; the one place that judges it. The summary, the
manifest (recipe.coverage) and the reports read what this computes.

    cov = coverage_of(onnx.load(path, load_external_data=False))
    recipe_label("int8-dynamic", cov)   # packager/labels.py: "int8-dynamic (int8 93%, fp32 7% of weight bytes)"
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Any

import onnx

from packager.graphs import all_graphs
from packager.labels import FLOAT_PRECISIONS

# Ops whose weight input is packed n-bit (the `bits` attribute, 4 when absent), and its position.
_NBITS = {"MatMulNBits": 1, "GatherBlockQuantized": 0}
# Ops that consume 8-bit weights and their quantization parameters.
_INT8_OPS = {"MatMulInteger", "ConvInteger", "DynamicQuantizeMatMul", "MatMulIntegerToFloat", "DynamicQuantizeLSTM",
             "QAttention", "QLinearMatMul", "QLinearConv", "QuantizeLinear", "DequantizeLinear",
             "QEmbedLayerNormalization"}
_FLOATS: dict[int, str] = {onnx.TensorProto.FLOAT: "fp32", onnx.TensorProto.FLOAT16: "fp16",
                           onnx.TensorProto.BFLOAT16: "bf16", onnx.TensorProto.DOUBLE: "fp64"}
_INT8 = {onnx.TensorProto.INT8, onnx.TensorProto.UINT8}
_INT4 = {onnx.TensorProto.INT4, onnx.TensorProto.UINT4}
# The layers a quantizing recipe is expected to take: float weights left in them are named in the coverage.
_WEIGHT_OPS = ("MatMul", "Gemm", "Conv", "ConvTranspose", "Gather", "LSTM", "GRU", "Attention")


def _size(t: onnx.TensorProto) -> int:
    n: int = math.prod(t.dims)
    if t.data_type in _INT4:
        return (n + 1) // 2
    if t.data_type == onnx.TensorProto.STRING:
        return 0
    return int(n * onnx.helper.tensor_dtype_to_np_dtype(t.data_type).itemsize)


def _tensors(model: onnx.ModelProto) -> list[tuple[str, onnx.TensorProto]]:
    """(value name, tensor) of every initializer and Constant node, subgraphs included; no data read."""
    found = []
    for g in all_graphs(model.graph):
        found += [(t.name, t) for t in g.initializer]
        found += [(n.output[0], a.t) for n in g.node if n.op_type == "Constant" and n.output
                  for a in n.attribute if a.type == onnx.AttributeProto.TENSOR]
    return found


def _consumers(model: onnx.ModelProto) -> dict[str, list[tuple[onnx.NodeProto, int]]]:
    """value name -> (node, input position) of every node reading it, in every graph."""
    found: dict[str, list[tuple[onnx.NodeProto, int]]] = {}
    for g in all_graphs(model.graph):
        for node in g.node:
            for i, name in enumerate(node.input):
                found.setdefault(name, []).append((node, i))
    return found


def _bits(node: onnx.NodeProto) -> str:
    bits = next((a.i for a in node.attribute if a.name == "bits"), 4)
    return f"int{bits}"


def _precision(t: onnx.TensorProto, readers: list[tuple[onnx.NodeProto, int]]) -> str | None:
    """The precision a tensor holds weights at; None for what is not a weight (shapes, indices)."""
    packed = [n for n, i in readers if _NBITS.get(n.op_type) == i]
    if packed:
        return _bits(packed[0])
    quantized = [n for n, _ in readers if n.op_type in _INT8_OPS | set(_NBITS)]
    if readers and len(quantized) == len(readers):
        # a quantized op's weight, or its scales and zero points: they belong to the quantized form
        nbits = [n for n in quantized if n.op_type in _NBITS]
        return _bits(nbits[0]) if nbits else "int8"
    if t.data_type in _INT4:
        return "int4"
    if t.data_type in _INT8 and quantized:
        return "int8"
    return _FLOATS.get(t.data_type)


def coverage_of(model: onnx.ModelProto) -> dict[str, Any]:
    """{"bytes": {precision: weight bytes}, "share": {precision: fraction}, "float_in": {op: bytes}}: float
    weights left in the layers a quantizer takes (MatMul, Gemm, Conv, Gather...), by op type."""
    readers = _consumers(model)
    sizes: Counter[str] = Counter()
    left: Counter[str] = Counter()
    for name, t in _tensors(model):
        precision = _precision(t, readers.get(name, []))
        if precision is None:
            continue
        sizes[precision] += _size(t)
        if precision in FLOAT_PRECISIONS:
            for node, i in readers.get(name, []):
                if node.op_type in _WEIGHT_OPS and i > 0 or node.op_type == "Gather" and i == 0:
                    left[node.op_type] += _size(t)
                    break
    total = sum(sizes.values()) or 1
    order = sorted(sizes, key=lambda p: -sizes[p])
    return {"bytes": {p: sizes[p] for p in order},
            "share": {p: round(sizes[p] / total, 4) for p in order},
            "float_in": dict(sorted(left.items()))}


def merge(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """One coverage for several components (an encoder-decoder's), from theirs."""
    sizes: Counter[str] = Counter()
    left: Counter[str] = Counter()
    for c in parts:
        sizes.update(c.get("bytes", {}))
        left.update(c.get("float_in", {}))
    total = sum(sizes.values()) or 1
    order = sorted(sizes, key=lambda p: -sizes[p])
    return {"bytes": {p: sizes[p] for p in order}, "share": {p: round(sizes[p] / total, 4) for p in order},
            "float_in": dict(sorted(left.items()))}
