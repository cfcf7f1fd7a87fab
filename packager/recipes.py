"""Quantization recipes: small functions named from the profiles' `recipe` key.

Each recipe reads an fp32 ONNX model and writes the model to ship, with the target's settings
(`RecipeOptions`). It returns what it did, for the manifest. The registry `RECIPES` is the one
place a recipe name is defined.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import onnx

from packager.profiles import Int4

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


@dataclass(frozen=True)
class RecipeOptions:
    """What a recipe may need beyond the model: the target's kernel settings."""

    int4: Int4 = field(default_factory=Int4)
    # int8-static: the inputs the activations' ranges are measured on (packager/calibration.py)
    calibration: list[dict[str, np.ndarray]] = field(default_factory=list)
    calibration_source: str = ""
    # Called with a short line as the recipe goes (int4: each weight quantized), for the human watching.
    progress: Callable[[str], None] | None = None


def _needs_external_data(src: Path) -> bool:
    total = src.stat().st_size + sum(p.stat().st_size for p in src.parent.glob(f"{src.stem}*data*"))
    return total > _PROTO_LIMIT


def _save(model: onnx.ModelProto, dst: Path, external: bool) -> None:
    """Save, with the weights in `<dst name>.data` beside it when external: a fixed name (onnx.save names
    the file after a fresh uuid without one, which would differ in every bundle), written afresh
    (onnx.save appends to a data file that exists)."""
    if external:
        (dst.parent / f"{dst.name}.data").unlink(missing_ok=True)
        onnx.save(model, dst, save_as_external_data=True, all_tensors_to_one_file=True, location=f"{dst.name}.data")
    else:
        onnx.save(model, dst)


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


def int8_static(src: Path, dst: Path, options: RecipeOptions) -> RecipeResult:
    """int8 weights (per channel, signed) and int8 activations with ranges measured on calibration
    inputs, as QuantizeLinear/DequantizeLinear pairs (QDQ), which NNAPI, QNN, XNNPACK and
    TensorRT take as well as the CPU. For encoders and tensor models."""
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, \
        quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.feeds = iter(options.calibration)

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.feeds, None)

    # Only nodes with a constant weight: quantizing both activations of an attention MatMul
    # (Q.K^T, scores.V) costs most of the accuracy (all-MiniLM-L6-v2: mean cosine 0.944 either way,
    # but min 0.911 with them against 0.925 without; README "int8 static").
    model = onnx.load(src, load_external_data=False)
    weights = {i.name for i in model.graph.initializer}
    nodes = [n.name for n in model.graph.node
             if (n.op_type in ("MatMul", "Gemm", "Conv") and len(n.input) > 1 and n.input[1] in weights)
             or (n.op_type == "Gather" and n.input[0] in weights)]
    del model
    params = {"format": "QDQ", "per_channel": True, "weight_type": "QInt8", "activation_type": "QUInt8",
              "calibrate_method": "MinMax", "calibration": options.calibration_source, "nodes": len(nodes)}
    logging.getLogger().setLevel(logging.ERROR)
    quantize_static(src, dst, Reader(), quant_format=QuantFormat.QDQ, op_types_to_quantize=["MatMul", "Gemm", "Conv",
                    "Gather"], nodes_to_quantize=nodes, per_channel=True, reduce_range=False,
                    weight_type=QuantType.QInt8, activation_type=QuantType.QUInt8,
                    calibrate_method=CalibrationMethod.MinMax, use_external_data_format=_needs_external_data(src))
    quantized = count_ops(onnx.load(dst, load_external_data=False), {"QuantizeLinear"})
    return RecipeResult("int8-static", params, quantized)


def fp16(src: Path, dst: Path, options: RecipeOptions) -> RecipeResult:
    """fp16 weights and compute with fp32 inputs and outputs kept (GPU targets)."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = onnx.load(src)
    converted = convert_float_to_float16(model, keep_io_types=True)
    _save(converted, dst, _needs_external_data(src))
    return RecipeResult("fp16", {"keep_io_types": True}, 0)


def int4(src: Path, dst: Path, options: RecipeOptions) -> RecipeResult:
    """4-bit weights, block-wise (MatMulNBits), the embedding table too (GatherBlockQuantized);
    activations stay float. A tied embedding / lm_head pair stays one weight in the file. For
    decoder LLMs, whose weights are most of their memory.

    Streams: the graph is read without its external data, and the quantizer reads each weight from
    the source's file when it reaches it (memory-mapped: onnx_ir's ExternalTensor) and drops it once
    quantized. What is held is the graph, one fp32 weight and the 4-bit output, not the fp32 model
    (a 1B model: 5 GB of fp32 weights, 0.8 GB of output). Inline models are quantized the same way,
    all in memory, as before."""
    from onnxruntime.quantization.matmul_nbits_quantizer import DefaultWeightOnlyQuantConfig, MatMulNBitsQuantizer

    settings = options.int4
    model = onnx.load(src, load_external_data=False)
    _locate_external_data(model, src.parent)
    tied = find_tied_embedding(model) if settings.symmetric else None
    op_types = ("MatMul",) if tied else ("MatMul", "Gather")
    if not tied:
        # The quantizer reads a Gather's table with onnx's loader, which wants it inline: only this
        # table comes into memory (the embedding's fp32 bytes, a fifth of a 1B model's).
        _load_tensors(model, {n.input[0] for n in model.graph.node if n.op_type == "Gather"})
    config = DefaultWeightOnlyQuantConfig(
        block_size=settings.block_size, is_symmetric=settings.symmetric,
        accuracy_level=settings.accuracy_level or None,
        op_types_to_quantize=op_types,
        quant_axes=(("MatMul", 0), ("Gather", 1)),
    )
    logging.getLogger().setLevel(logging.ERROR)  # its opset-21 upgrade warning is expected here
    quantizer = MatMulNBitsQuantizer(model, algo_config=config)
    _count_progress(quantizer, model, op_types, options.progress)
    quantizer.process()
    quantized = quantizer.model.model
    del model, quantizer
    embedding = "float (no constant embedding table)"
    if tied:
        embedding = tie_embedding(quantized, *tied, settings.block_size)
    elif count_ops(quantized, {"GatherBlockQuantized"}):
        embedding = "int4 (GatherBlockQuantized, its own table)"
    # What stayed float (norms, biases, what no quantized op reads) comes in from the source now,
    # each tensor once: onnx.save writes the model file from memory.
    _load_tensors(quantized, None)
    _save(quantized, dst, _needs_external_data(src))
    params = {"block_size": settings.block_size, "symmetric": settings.symmetric,
              "accuracy_level": settings.accuracy_level, "embedding": embedding}
    return RecipeResult("int4", params, count_ops(quantized, _QUANTIZED_OPS))


def _count_progress(quantizer: Any, model: onnx.ModelProto, op_types: tuple[str, ...],
                    progress: Callable[[str], None] | None) -> None:
    """Report each weight the quantizer finishes (n of total, the node), for the human watching."""
    if progress is None:
        return
    inits = {i.name for i in model.graph.initializer}

    def constant_weight(node: onnx.NodeProto) -> bool:   # the others (attention's MatMuls) are left alone
        return (node.input[1] if node.op_type == "MatMul" else node.input[0]) in inits

    total = sum(1 for n in model.graph.node if n.op_type in op_types and constant_weight(n))
    quantize = quantizer.node_quantizer.quantize
    done = 0

    def counted(node: onnx.NodeProto, graph_stack: list[onnx.GraphProto]) -> list[onnx.NodeProto]:
        nonlocal done
        result = quantize(node, graph_stack)
        if constant_weight(node):
            done += 1
            progress(f"{done}/{total} weights ({node.name or node.op_type})")
        return result

    quantizer.node_quantizer.quantize = counted


def _external_tensors(model: onnx.ModelProto) -> list[onnx.TensorProto]:
    """Initializers and Constant nodes' tensors kept in external data (the exporter moves large
    constants there too), subgraphs included."""
    found = []
    for g in _all_graphs(model.graph):
        found += list(g.initializer)
        found += [a.t for n in g.node for a in n.attribute if a.type == onnx.AttributeProto.TENSOR]
    return [t for t in found if t.data_location == onnx.TensorProto.EXTERNAL]


def _all_graphs(graph: onnx.GraphProto) -> list[onnx.GraphProto]:
    found = [graph]
    for node in graph.node:
        for attr in node.attribute:
            for g in ([attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)):
                found += _all_graphs(g)
    return found


def _locate_external_data(model: onnx.ModelProto, folder: Path) -> None:
    """Point each external tensor at its file by absolute path: the quantizer resolves locations
    from the current directory (onnx_ir with no base folder), not from the model's."""
    for t in _external_tensors(model):
        for entry in t.external_data:
            if entry.key == "location":
                entry.value = str((folder / entry.value).resolve())


def tensor_array(t: onnx.TensorProto, folder: Path | None = None) -> np.ndarray:
    """A tensor's values; external data (relative to `folder`, or at an absolute location) memory-mapped,
    not read."""
    if t.data_location == onnx.TensorProto.EXTERNAL:
        from onnx_ir import serde

        return serde.deserialize_tensor(t, str(folder or "")).numpy()
    from onnx.numpy_helper import to_array

    return to_array(t)


def _load_tensors(model: onnx.ModelProto, names: set[str] | None) -> None:
    """Read these external tensors (all of them with None) into the model, from their files."""
    for t in _external_tensors(model):
        if names is not None and t.name not in names:
            continue
        info = {e.key: e.value for e in t.external_data}
        with open(info["location"], "rb") as f:
            f.seek(int(info.get("offset", 0)))
            t.raw_data = f.read(int(info["length"])) if "length" in info else f.read()
        del t.external_data[:]
        t.data_location = onnx.TensorProto.DEFAULT


def find_tied_embedding(model: onnx.ModelProto, folder: Path | None = None) -> tuple[str, str] | None:
    """(Gather node name, lm_head MatMul weight) when the exporter wrote the tied embedding table
    twice: once [vocab, hidden] for the Gather, once transposed [hidden, vocab] for the lm_head.
    External tables (relative to `folder`) are compared memory-mapped, a slice of rows at a time (a
    1B model's are 1 GB each)."""
    inits = {i.name: i for i in model.graph.initializer}
    tables = [(n, inits[n.input[0]]) for n in model.graph.node
              if n.op_type == "Gather" and n.input[0] in inits and len(inits[n.input[0]].dims) == 2]
    heads = [inits[n.input[1]] for n in model.graph.node
             if n.op_type == "MatMul" and n.input[1] in inits and len(inits[n.input[1]].dims) == 2]
    for gather, table in tables:
        for head in heads:
            if list(head.dims) == list(reversed(table.dims)) and _transposed(tensor_array(table, folder),
                                                                                     tensor_array(head, folder)):
                return gather.name, head.name
    return None


def _transposed(table: np.ndarray, head: np.ndarray, rows: int = 8192) -> bool:
    """table.T == head, compared in slices of `rows` table rows (no full-size temporaries)."""
    if table.dtype != head.dtype:
        return False
    return all(np.array_equal(table[r:r + rows].T, head[:, r:r + rows]) for r in range(0, table.shape[0], rows))


def tie_embedding(model: onnx.ModelProto, gather_name: str, head_weight: str, block_size: int) -> str:
    """Point the embedding Gather at the lm_head's 4-bit weight: a GatherBlockQuantized over the
    MatMulNBits' own B ([vocab, blocks, block/2] uint8, zero point 8 by default on both ops)."""
    from onnx import helper, numpy_helper

    graph = model.graph
    head = next(n for n in graph.node if n.op_type == "MatMulNBits" and n.input[1] == f"{head_weight}_Q4")
    b_name, scales_name = head.input[1], head.input[2]
    inits = {i.name: i for i in graph.initializer}
    vocab, blocks = (int(d) for d in inits[b_name].dims[:2])
    hidden = next(helper.get_attribute_value(a) for a in head.attribute if a.name == "K")
    # GatherBlockQuantized wants scales of data's rank; MatMulNBits wants [N, blocks]: the scales
    # (1/8 of the packed weight at block 32) are stored twice, the weight once.
    scales3d = numpy_helper.to_array(inits[scales_name]).reshape(vocab, blocks, 1)
    graph.initializer.append(numpy_helper.from_array(scales3d, f"{scales_name}_gather"))
    index = next(i for i, n in enumerate(graph.node) if n.name == gather_name)
    gather = graph.node[index]
    table, ids, out = gather.input[0], gather.input[1], gather.output[0]
    p = f"{gather_name}_tied"
    graph.initializer.append(numpy_helper.from_array(np.array([hidden], dtype=np.int64), f"{p}/hidden"))
    nodes = [
        helper.make_node("GatherBlockQuantized", [b_name, ids, f"{scales_name}_gather"], [f"{p}/blocks"],
                         name=f"{p}/GatherBlockQuantized", domain="com.microsoft", gather_axis=0,
                         quantize_axis=2, block_size=block_size, bits=4),
        helper.make_node("Shape", [ids], [f"{p}/ids_shape"], name=f"{p}/Shape"),
        helper.make_node("Concat", [f"{p}/ids_shape", f"{p}/hidden"], [f"{p}/shape"], name=f"{p}/Concat", axis=0),
        helper.make_node("Reshape", [f"{p}/blocks", f"{p}/shape"], [out], name=f"{p}/Reshape"),
    ]
    del graph.node[index]
    for offset, node in enumerate(nodes):
        graph.node.insert(index + offset, node)
    if not any(table in n.input for n in graph.node):
        graph.initializer.remove(inits[table])
    return "int4, tied: GatherBlockQuantized reads the lm_head's MatMulNBits weight"


RECIPES: dict[str, Callable[[Path, Path, RecipeOptions], RecipeResult]] = {
    "fp32": fp32,
    "int8-dynamic": int8_dynamic,
    "int8-static": int8_static,
    "fp16": fp16,
    "int4": int4,
}
# Recipes that need calibration inputs (RecipeOptions.calibration).
CALIBRATED = {"int8-static"}
