"""fp32, fp16 and int8 (dynamic and static): onnxruntime's converters and quantizers, and the merged-decoder
forms that apply them to each graph of a merged decoder before merging again."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from packager import fusion, smoothing
from packager.leftovers import temp_folder
from packager.recipes.common import _QUANTIZED_OPS, RecipeOptions, RecipeResult, count_ops, needs_external_data, save
from packager.recipes.prepare import prepare, refusal


def fp32(src: Path, dst: Path, options: RecipeOptions) -> RecipeResult:
    """No quantization: the exported fp32 model as it is."""
    shutil.copyfile(src, dst)
    return RecipeResult("fp32", {}, 0)


def int8_dynamic(src: Path, dst: Path, options: RecipeOptions) -> RecipeResult:
    """int8 weights per output channel, signed; activations quantized at run time, one scale per
    tensor (uint8). Text models are prepared first (packager/fusion.py, packager/smoothing.py):
    attention fused into one node, for speed, and the activations' outlier channels moved into
    the weights, since per-tensor activation scales are what cost the accuracy. Every MatMul with
    a constant weight, and the embedding table, is quantized; none is kept in float. For encoders
    on CPU targets."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    params: dict[str, Any] = {"per_channel": True, "weight_type": "QInt8", "reduce_range": False}
    logging.getLogger().setLevel(logging.ERROR)  # the quantizer's pre-processing advice is noise here
    external = needs_external_data(src)
    with temp_folder("int8") as tmp:
        folded, done = prepare(src, Path(tmp), external)
        model, prepared = _prepare_for_int8(folded, Path(tmp), external)
        params |= done | prepared
        try:
            quantize_dynamic(
                model, dst, per_channel=True, reduce_range=False, weight_type=QuantType.QInt8,
                use_external_data_format=external,
                # shape inference does not know the fused contrib ops: their outputs are float
                extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT} if prepared["fusion"]["applied"] else None,
            )
        except Exception as e:
            refused = refusal("int8-dynamic", model, e)
            if refused is None:
                raise
            raise refused from e
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


def int8_static(src: Path, dst: Path, options: RecipeOptions) -> RecipeResult:
    """int8 weights (per channel, signed) and int8 activations with ranges measured on calibration
    inputs, as QuantizeLinear/DequantizeLinear pairs (QDQ), which NNAPI, QNN, XNNPACK and
    TensorRT take as well as the CPU. For encoders and tensor models."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    class Reader(CalibrationDataReader):  # type: ignore[misc]  # onnxruntime has no type information: Any
        def __init__(self) -> None:
            self.feeds = iter(options.calibration)

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.feeds, None)

    # Only nodes with a constant weight: quantizing both activations of an attention MatMul
    # (Q.K^T, scores.V) costs most of the accuracy (all-MiniLM-L6-v2: mean cosine 0.944 either way,
    # but min 0.911 with them against 0.925 without; docs/recipes.md, int8-static).
    external = needs_external_data(src)
    with temp_folder("int8") as tmp:
        folded, done = prepare(src, Path(tmp), external)
        model = onnx.load(folded, load_external_data=False)
        folded, done = _opset_for_per_channel(model, folded, Path(tmp), done)
        weights = {i.name for i in model.graph.initializer}
        nodes = [n.name for n in model.graph.node
                 if (n.op_type in ("MatMul", "Gemm", "Conv") and len(n.input) > 1 and n.input[1] in weights)
                 or (n.op_type == "Gather" and n.input[0] in weights)]
        del model
        params = {"format": "QDQ", "per_channel": True, "weight_type": "QInt8", "activation_type": "QUInt8",
                  "calibrate_method": "MinMax", "calibration": options.calibration_source, "nodes": len(nodes), **done}
        logging.getLogger().setLevel(logging.ERROR)
        quantize_static(folded, dst, Reader(), quant_format=QuantFormat.QDQ,
                        op_types_to_quantize=["MatMul", "Gemm", "Conv", "Gather"], nodes_to_quantize=nodes,
                        per_channel=True, reduce_range=False, weight_type=QuantType.QInt8,
                        activation_type=QuantType.QUInt8, calibrate_method=CalibrationMethod.MinMax,
                        use_external_data_format=external)
    quantized = count_ops(onnx.load(dst, load_external_data=False), {"QuantizeLinear"})
    return RecipeResult("int8-static", params, quantized)


# Per-channel QDQ writes DequantizeLinear with an axis, which arrived in ai.onnx opset 13: below it the quantized
# model does not load ("Unrecognized attribute: axis"; paddle2onnx writes opset 11 and 12).
PER_CHANNEL_OPSET = 13


def _opset_for_per_channel(model: onnx.ModelProto, path: Path, tmp: Path,
                           done: dict[str, Any]) -> tuple[Path, dict[str, Any]]:
    """The model at PER_CHANNEL_OPSET at least: onnx's version converter rewrites the operators that changed
    (Squeeze's axes become an input, ...), so the model stays what it was."""
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), PER_CHANNEL_OPSET)
    if opset >= PER_CHANNEL_OPSET:
        return path, done
    from onnx import version_converter

    converted = tmp / "opset13.onnx"
    onnx.save(version_converter.convert_version(model, PER_CHANNEL_OPSET), converted)
    return converted, {**done, "opset_raised": {"from": opset, "to": PER_CHANNEL_OPSET,
                                                "why": "per-channel DequantizeLinear needs opset 13"}}


def fp16(src: Path, dst: Path, options: RecipeOptions) -> RecipeResult:
    """fp16 weights and compute with fp32 inputs and outputs kept (GPU targets)."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = onnx.load(src)
    converted = convert_float_to_float16(model, keep_io_types=True)
    save(converted, dst, needs_external_data(src))
    return RecipeResult("fp16", {"keep_io_types": True}, 0)


def fp16_merged(parts: tuple[Path, ...], dst: Path, options: RecipeOptions) -> RecipeResult:
    """fp16 for a decoder merged from its first-step and cached-step graphs (optimum's
    decoder_model_merged): each part converted with fp16 inputs and outputs, merged again by optimum's
    merge_decoders (their fp16 weights shared once), and the float32 inputs and outputs restored with
    Casts outside the If, so that the runner feeds it as it feeds the fp32 graph."""
    from onnx import TensorProto, helper
    from onnxruntime.transformers.float16 import convert_float_to_float16

    first, cached = (convert_float_to_float16(onnx.load(p), keep_io_types=False) for p in parts)
    model = _merge(first, cached)
    graph = model.graph
    renames: dict[str, str] = {}
    casts_in, casts_out = [], []
    for value in graph.input:
        if value.type.tensor_type.elem_type == TensorProto.FLOAT16:
            renames[value.name] = f"{value.name}_fp16"
            casts_in.append(helper.make_node("Cast", [value.name], [renames[value.name]], to=TensorProto.FLOAT16,
                                             name=f"{value.name}_fp16/Cast"))
            value.type.tensor_type.elem_type = TensorProto.FLOAT
    _rename_inputs(graph, renames)
    for value in graph.output:
        if value.type.tensor_type.elem_type == TensorProto.FLOAT16:
            inner = f"{value.name}_fp16"
            for node in graph.node:
                node.output[:] = [inner if o == value.name else o for o in node.output]
            casts_out.append(helper.make_node("Cast", [inner], [value.name], to=TensorProto.FLOAT,
                                              name=f"{inner}/Cast"))
            value.type.tensor_type.elem_type = TensorProto.FLOAT
    nodes = [*casts_in, *graph.node, *casts_out]
    del graph.node[:]
    graph.node.extend(nodes)
    save(model, dst, needs_external_data(parts[0]))
    return RecipeResult("fp16", {"keep_io_types": True, "merged": "each decoder graph converted, then merged"}, 0)


def int8_dynamic_merged(parts: tuple[Path, ...], dst: Path, options: RecipeOptions) -> RecipeResult:
    """int8-dynamic for a merged decoder: the dynamic quantizer leaves If branches alone, so each unmerged
    graph is quantized on its own and merged again by optimum's merge_decoders, which keeps their
    (identical) int8 weights once."""
    with temp_folder("int8-merged") as tmp:
        results = [int8_dynamic(part, Path(tmp) / part.name, options) for part in parts]
        model = _merge(onnx.load(Path(tmp) / parts[0].name), onnx.load(Path(tmp) / parts[1].name))
    save(model, dst, needs_external_data(parts[0]))
    params = results[0].params | {"merged": "each decoder graph quantized, then merged"}
    return RecipeResult("int8-dynamic", params, count_ops(model, _QUANTIZED_OPS))


def _merge(first: onnx.ModelProto, cached: onnx.ModelProto) -> onnx.ModelProto:
    """optimum's merge_decoders, with the shared initializers named and ordered the same on every run: it
    picks their names from Python sets (string hashes vary per process), which would change the bundle's
    bytes from one run to the next. Named weights keep their names; the exporter's anonymous constants
    (onnx::...) are named after their content."""
    import hashlib
    import re

    from optimum.onnx import merge_decoders

    with temp_folder("merge") as tmp:
        merge_decoders(first, cached, strict=False, save_path=str(Path(tmp) / "merged.onnx"))
        model = onnx.load(Path(tmp) / "merged.onnx")
    graph = model.graph
    renames: dict[str, str] = {}
    taken: set[str] = set()
    for init in sorted(graph.initializer, key=lambda i: hashlib.sha256(i.SerializeToString()).hexdigest()):
        stem = re.sub(r"_merged_\d+$", "", init.name)
        if stem.startswith("onnx::"):
            content = onnx.TensorProto()
            content.CopyFrom(init)
            content.name = ""
            stem = f"const_{hashlib.sha256(content.SerializeToString()).hexdigest()[:16]}"
        name, n = stem, 1
        while name in taken:
            name, n = f"{stem}_{n}", n + 1
        taken.add(name)
        renames[init.name] = name
    for init in graph.initializer:
        init.name = renames[init.name]
    _rename_inputs(graph, renames)
    ordered = sorted(graph.initializer, key=lambda i: i.name)
    del graph.initializer[:]
    graph.initializer.extend(ordered)
    return model


def _rename_inputs(graph: onnx.GraphProto, renames: dict[str, str]) -> None:
    """Point every node reading a renamed value at its new name, in subgraphs too (they read the outer scope)."""
    for node in graph.node:
        node.input[:] = [renames.get(i, i) for i in node.input]
        for attr in node.attribute:
            for sub in ([attr.g] if attr.type == onnx.AttributeProto.GRAPH else []) + list(attr.graphs):
                _rename_inputs(sub, renames)


