"""Quantization recipes: small functions named from the profiles' `recipe` key.

Each recipe reads an fp32 ONNX model and writes the model to ship. It returns what it did,
for the manifest. The registry `RECIPES` is the one place a recipe name is defined.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import onnx

# Kernels that mean a node now computes in a quantized form.
_QUANTIZED_OPS = {
    "MatMulInteger", "ConvInteger", "DynamicQuantizeMatMul", "MatMulIntegerToFloat",
    "DynamicQuantizeLSTM", "QAttention", "QLinearMatMul", "QLinearConv", "MatMulNBits",
    "GatherBlockQuantized", "QuantizeLinear", "DequantizeLinear", "QEmbedLayerNormalization",
}
# Protobuf cannot hold more than 2 GiB: bigger models keep their weights in external data.
_PROTO_LIMIT = 2**31 - 1


@dataclass(frozen=True)
class RecipeResult:
    name: str
    params: dict[str, Any]
    quantized_nodes: int
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def _needs_external_data(src: Path) -> bool:
    total = src.stat().st_size + sum(p.stat().st_size for p in src.parent.glob(f"{src.stem}*data*"))
    return total > _PROTO_LIMIT


def count_ops(model: onnx.ModelProto, ops: set[str]) -> int:
    """Nodes of the given types, subgraphs (If/Loop/Scan bodies) included."""

    def walk(graph: onnx.GraphProto) -> int:
        n = 0
        for node in graph.node:
            n += node.op_type in ops
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.GRAPH:
                    n += walk(attr.g)
                n += sum(walk(g) for g in attr.graphs)
        return n

    return walk(model.graph)


def fp32(src: Path, dst: Path) -> RecipeResult:
    """No quantization: the exported fp32 model as it is."""
    shutil.copyfile(src, dst)
    return RecipeResult("fp32", {}, 0)


def int8_dynamic(src: Path, dst: Path) -> RecipeResult:
    """int8 weights per output channel, signed; activations quantized at run time, one scale per
    tensor (uint8). Text models are prepared first (packager/fusion.py, packager/smoothing.py):
    attention fused into one node, for speed, and the activations' outlier channels moved into
    the weights, since per-tensor activation scales are what cost the accuracy. Every MatMul with
    a constant weight, and the embedding table, is quantized; none is kept in float. For encoders
    on CPU targets."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    params: dict[str, Any] = {"per_channel": True, "weight_type": "QInt8", "reduce_range": False}
    logging.getLogger().setLevel(logging.ERROR)  # the quantizer's pre-processing advice is noise here
    external = _needs_external_data(src)
    with tempfile.TemporaryDirectory(prefix="packager-int8-") as tmp:
        model, prepared = _prepare_for_int8(src, Path(tmp), external)
        params |= prepared
        quantize_dynamic(
            model, dst, per_channel=True, reduce_range=False, weight_type=QuantType.QInt8,
            use_external_data_format=external,
            # shape inference does not know the fused contrib ops: their outputs are float
            extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT} if prepared["fusion"]["applied"] else None,
        )
    quantized = count_ops(onnx.load(dst, load_external_data=False), _QUANTIZED_OPS)
    if quantized == 0:
        # Nothing was quantizable (e.g. weights inside If/Loop bodies, which the dynamic
        # quantizer leaves alone): ship the original, which is the same model and smaller.
        shutil.copyfile(src, dst)
        for step in ("fusion", "smoothing"):
            if params[step].get("applied"):
                params[step] = {"applied": False, "why": "nothing was quantized: the original ships"}
        return RecipeResult("int8-dynamic", params, 0,
                            note="no node was quantizable; the model ships as fp32")
    return RecipeResult("int8-dynamic", params, quantized)


def _prepare_for_int8(src: Path, tmp: Path, external: bool) -> tuple[Path, dict[str, Any]]:
    """The model to quantize, and the fusion and smoothing params: both need a text model (its
    tokenizer beside it, for the calibration sentences) small enough for one protobuf."""
    from packager import fusion, smoothing

    feeds = None if external else smoothing.calibration_feeds(src)
    if feeds is None:
        why = ("model over 2 GiB (the rewrite holds it in one protobuf)" if external
               else "not a text model with its tokenizer: no calibration texts")
        return src, {"fusion": {"applied": False, "why": why}, "smoothing": {"applied": False, "why": why}}
    model = src
    done: dict[str, Any] = {"fusion": fusion.fuse(src, tmp / "fused.onnx", feeds)}
    if done["fusion"]["applied"]:
        model = tmp / "fused.onnx"
    done["smoothing"] = smoothing.smooth(model, tmp / "smoothed.onnx", feeds)
    if done["smoothing"]["applied"]:
        model = tmp / "smoothed.onnx"
    return model, done


def fp16(src: Path, dst: Path) -> RecipeResult:
    """fp16 weights and compute with fp32 inputs and outputs kept (GPU targets)."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = onnx.load(src)
    converted = convert_float_to_float16(model, keep_io_types=True)
    onnx.save(converted, dst, save_as_external_data=_needs_external_data(src))
    return RecipeResult("fp16", {"keep_io_types": True}, 0)


RECIPES: dict[str, Callable[[Path, Path], RecipeResult]] = {
    "fp32": fp32,
    "int8-dynamic": int8_dynamic,
    "fp16": fp16,
}
