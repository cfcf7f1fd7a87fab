"""Quantization recipes: small functions named from the profiles' `recipe` key.

Each recipe reads an fp32 ONNX model and writes the model to ship, with the target's settings
(`RecipeOptions`). It returns what it did, for the manifest. The registry `RECIPES` is the one
place a recipe name is defined.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import onnx

from packager.graphs import all_graphs
from packager.leftovers import temp_folder
from packager.profiles import Int4

# Kernels that mean a node now computes in a quantized form.
_QUANTIZED_OPS = {
    "MatMulInteger", "ConvInteger", "DynamicQuantizeMatMul", "MatMulIntegerToFloat",
    "DynamicQuantizeLSTM", "QAttention", "QLinearMatMul", "QLinearConv", "MatMulNBits",
    "GatherBlockQuantized", "QuantizeLinear", "DequantizeLinear", "QEmbedLayerNormalization",
}
# Protobuf cannot hold more than 2 GiB: bigger models keep their weights in external data.
PROTO_LIMIT = 2**31 - 1


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
    # int4-mixed: the layers (packager/mixed.py's names, "layers.3", "lm_head") kept at 8 bits
    keep_8bit: tuple[str, ...] = ()
    # int4-mixed: where this run keeps the model's 4- and 8-bit quantizations (quantized_nbits), so that each
    # layer set the search tries is only a mix of the two; None: quantize afresh
    nbits_dir: Path | None = None
    # Called with a short line as the recipe goes (int4: each weight quantized), for the human watching.
    progress: Callable[[str], None] | None = None


def needs_external_data(src: Path) -> bool:
    total = src.stat().st_size + sum(p.stat().st_size for p in src.parent.glob(f"{src.stem}*data*"))
    return total > PROTO_LIMIT


def save(model: onnx.ModelProto, dst: Path, external: bool) -> None:
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
    return sum(node.op_type in ops for g in all_graphs(model.graph) for node in g.node)


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
    # but min 0.911 with them against 0.925 without; docs/recipes.md, int8-static).
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
                    calibrate_method=CalibrationMethod.MinMax, use_external_data_format=needs_external_data(src))
    quantized = count_ops(onnx.load(dst, load_external_data=False), {"QuantizeLinear"})
    return RecipeResult("int8-static", params, quantized)


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
            casts_out.append(helper.make_node("Cast", [inner], [value.name], to=TensorProto.FLOAT, name=f"{inner}/Cast"))
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


# Recipes a merged decoder (If branches) gets by applying them to its unmerged graphs and merging again.
MERGED_RECIPES: dict[str, Callable[[tuple[Path, ...], Path, RecipeOptions], RecipeResult]] = {
    "fp16": fp16_merged,
    "int8-dynamic": int8_dynamic_merged,
}


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


def int4(src: Path, dst: Path, options: RecipeOptions) -> RecipeResult:
    """4-bit weights, block-wise (MatMulNBits), the embedding table too (GatherBlockQuantized);
    activations stay float. A tied embedding / lm_head pair stays one weight in the file. For
    decoder LLMs, whose weights are most of their memory."""
    return _nbits_recipe("int4", src, dst, dataclasses.replace(options, keep_8bit=(), nbits_dir=None))


def int4_mixed(src: Path, dst: Path, options: RecipeOptions) -> RecipeResult:
    """int4, but the layers named in `options.keep_8bit` at 8 bits (MatMulNBits bits=8, same blocks).
    Which layers: the fewest, most sensitive first, that keep the answers; the pipeline measures and
    chooses them (packager/mixed.py) and runs this recipe with its choice. With none kept it is int4."""
    return _nbits_recipe("int4-mixed", src, dst, options)


def _nbits_recipe(name: str, src: Path, dst: Path, options: RecipeOptions) -> RecipeResult:
    model, params = _nbits(src, options.int4, options.keep_8bit, options.progress, options.nbits_dir)
    save(model, dst, needs_external_data(src))
    return RecipeResult(name, params, count_ops(model, _QUANTIZED_OPS))


def quantize_nbits(model: onnx.ModelProto, settings: Int4, bits: int, tied: bool,
                   progress: Callable[[str], None] | None = None) -> onnx.ModelProto:
    """Every MatMul with a constant weight as MatMulNBits at `bits`, and (untied, 4 bits: the quantizer does
    Gather at 4 bits only) the embedding Gather as GatherBlockQuantized, with the profile's block size,
    symmetry and accuracy level; `model` is consumed."""
    from onnxruntime.quantization.matmul_nbits_quantizer import DefaultWeightOnlyQuantConfig, MatMulNBitsQuantizer

    config = DefaultWeightOnlyQuantConfig(
        block_size=settings.block_size, is_symmetric=settings.symmetric,
        accuracy_level=settings.accuracy_level or None,
        op_types_to_quantize=("MatMul",) if tied or bits != 4 else ("MatMul", "Gather"),
        quant_axes=(("MatMul", 0), ("Gather", 1)), bits=bits,
    )
    logging.getLogger().setLevel(logging.ERROR)  # its opset-21 upgrade warning is expected here
    quantizer = MatMulNBitsQuantizer(model, algo_config=config)
    _count_progress(quantizer, model, config.op_types_to_quantize, bits, progress)
    quantizer.process()
    quantized = quantizer.model.model
    if bits == 8 and not tied:
        _embedding_8bit(quantized, settings.block_size)
    return quantized


def _embedding_8bit(model: onnx.ModelProto, block_size: int) -> None:
    """An untied embedding table (a Gather of a constant [vocab, hidden]) as GatherBlockQuantized at 8 bits,
    which onnxruntime's quantizer does not write: symmetric blocks along hidden, uint8 with the default zero
    point 128, so that int4-mixed can raise the embedding as it raises any other layer."""
    from onnx import helper, numpy_helper

    inits = {i.name: i for i in model.graph.initializer}
    for index, node in enumerate(model.graph.node):
        table = inits.get(node.input[0]) if node.op_type == "Gather" else None
        if table is None or len(table.dims) != 2 or table.dims[1] % block_size:
            continue
        weights = tensor_array(table).astype(np.float32)
        blocks = weights.reshape(weights.shape[0], -1, block_size)
        scales = np.maximum(np.abs(blocks).max(axis=-1), 1e-12) / 127
        codes = (np.clip(np.round(blocks / scales[..., None]), -127, 127) + 128).astype(np.uint8)
        name = f"{table.name}_Q8"
        model.graph.initializer.extend([numpy_helper.from_array(codes.reshape(weights.shape), name),
                                        numpy_helper.from_array(scales.astype(np.float32), f"{name}_scales")])
        model.graph.node[index].CopyFrom(helper.make_node(
            "GatherBlockQuantized", [name, node.input[1], f"{name}_scales"], list(node.output),
            name=f"{node.name}_Q8", domain="com.microsoft", gather_axis=0, quantize_axis=1, block_size=block_size,
            bits=8))
        if not any(table.name in n.input for n in model.graph.node):
            model.graph.initializer.remove(table)


def _nbits(src: Path, settings: Int4, keep_8bit: tuple[str, ...], progress: Callable[[str], None] | None = None,
           keep: Path | None = None) -> tuple[onnx.ModelProto, dict[str, Any]]:
    """The int4 model with the layers in `keep_8bit` taken from an 8-bit quantization of the same
    weights (packager/mixed.py names the layers), the tied embedding rewired last, and its params.

    Streams: the graph is read without its external data, and the quantizer reads each weight from
    the source's file when it reaches it (memory-mapped: onnx_ir's ExternalTensor) and drops it once
    quantized. What is held is the graph, one fp32 weight and the 4-bit output, not the fp32 model
    (a 1B model: 5 GB of fp32 weights, 0.8 GB of output). Inline models are quantized the same way,
    all in memory. With `keep`, the two quantizations come from (or go to) that folder."""
    four, tied = quantized_nbits(src, settings, 4, progress, keep)
    eight = quantized_nbits(src, settings, 8, progress, keep)[0] if keep_8bit else None
    return mix_nbits(four, eight, keep_8bit, tied, settings)


def quantized_nbits(src: Path, settings: Int4, bits: int, progress: Callable[[str], None] | None = None,
                    keep: Path | None = None) -> tuple[onnx.ModelProto, tuple[str, str] | None]:
    """`src` quantized at `bits` (quantize_nbits) and its tied embedding pair. With `keep` (a folder of this
    run's, for this `src` and `settings`), made once and kept there, then read back: the int4-mixed search
    mixes the same two quantizations for every layer set it tries."""
    if keep is None:
        model, tied = load_for_nbits(src, settings)
        return quantize_nbits(model, settings, bits, tied is not None, progress), tied
    kept, tied_file = keep / f"{bits}bit.onnx", keep / "tied.json"
    if not kept.is_file():
        model, tied = load_for_nbits(src, settings)
        keep.mkdir(parents=True, exist_ok=True)
        save(quantize_nbits(model, settings, bits, tied is not None, progress), kept, needs_external_data(src))
        tied_file.write_text(json.dumps(tied), encoding="utf-8")
    pair = json.loads(tied_file.read_text(encoding="utf-8"))
    return onnx.load(kept), (pair[0], pair[1]) if pair else None


def mix_nbits(four: onnx.ModelProto, eight: onnx.ModelProto | None, keep_8bit: tuple[str, ...],
              tied: tuple[str, str] | None, settings: Int4) -> tuple[onnx.ModelProto, dict[str, Any]]:
    """`four` (changed in place) with the layers in `keep_8bit` taken from `eight` (packager/mixed.py),
    the tied embedding rewired last and what stayed float read in, and the recipe's params."""
    from packager import mixed

    params: dict[str, Any] = {"block_size": settings.block_size, "symmetric": settings.symmetric,
                              "accuracy_level": settings.accuracy_level}
    if keep_8bit:
        assert eight is not None
        params["mixed"] = mixed.compose(four, eight, keep_8bit)
    embedding = "float (no constant embedding table)"
    if tied:
        embedding = tie_embedding(four, *tied, settings.block_size)
    elif count_ops(four, {"GatherBlockQuantized"}):
        embedding = "int4 (GatherBlockQuantized, its own table)"
    # What stayed float (norms, biases, what no quantized op reads) comes in from the source now,
    # each tensor once: onnx.save writes the model file from memory.
    load_tensors(four, None)
    return four, params | {"embedding": embedding}


def load_for_nbits(src: Path, settings: Int4) -> tuple[onnx.ModelProto, tuple[str, str] | None]:
    """The model as quantize_nbits takes it, its weights left in their files (located by absolute path),
    and its tied embedding pair (find_tied_embedding) where the settings let int4 keep it tied."""
    model = onnx.load(src, load_external_data=False)
    _locate_external_data(model, src.parent)
    tied = find_tied_embedding(model) if settings.symmetric else None
    if not tied:
        # The quantizer reads a Gather's table with onnx's loader, which wants it inline: only this
        # table comes into memory (the embedding's fp32 bytes, a fifth of a 1B model's).
        load_tensors(model, {n.input[0] for n in model.graph.node if n.op_type == "Gather"})
    return model, tied


def _count_progress(quantizer: Any, model: onnx.ModelProto, op_types: tuple[str, ...], bits: int,
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
            progress(f"{done}/{total} weights at {bits} bits ({node.name or node.op_type})")
        return result

    quantizer.node_quantizer.quantize = counted


def _external_tensors(model: onnx.ModelProto) -> list[onnx.TensorProto]:
    """Initializers and Constant nodes' tensors kept in external data (the exporter moves large
    constants there too), subgraphs included."""
    found = []
    for g in all_graphs(model.graph):
        found += list(g.initializer)
        found += [a.t for n in g.node for a in n.attribute if a.type == onnx.AttributeProto.TENSOR]
    return [t for t in found if t.data_location == onnx.TensorProto.EXTERNAL]


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


def load_tensors(model: onnx.ModelProto, names: set[str] | None) -> None:
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
    """Point the embedding Gather at the lm_head's 4- or 8-bit weight: a GatherBlockQuantized over the
    MatMulNBits' own B ([vocab, blocks, block * bits / 8] uint8; the default zero point, 2^(bits-1),
    is the same on both ops)."""
    from onnx import helper, numpy_helper

    graph = model.graph
    head = next(n for n in graph.node if n.op_type == "MatMulNBits" and n.input[1] in (f"{head_weight}_Q4",
                                                                                      f"{head_weight}_Q8"))
    b_name, scales_name = head.input[1], head.input[2]
    bits = next((a.i for a in head.attribute if a.name == "bits"), 4)   # 4: MatMulNBits' default
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
                         quantize_axis=2, block_size=block_size, bits=bits),
        helper.make_node("Shape", [ids], [f"{p}/ids_shape"], name=f"{p}/Shape"),
        helper.make_node("Concat", [f"{p}/ids_shape", f"{p}/hidden"], [f"{p}/shape"], name=f"{p}/Concat", axis=0),
        helper.make_node("Reshape", [f"{p}/blocks", f"{p}/shape"], [out], name=f"{p}/Reshape"),
    ]
    del graph.node[index]
    for offset, node in enumerate(nodes):
        graph.node.insert(index + offset, node)
    if not any(table in n.input for n in graph.node):
        graph.initializer.remove(inits[table])
    return f"int{bits}, tied: GatherBlockQuantized reads the lm_head's MatMulNBits weight"


RECIPES: dict[str, Callable[[Path, Path, RecipeOptions], RecipeResult]] = {
    "fp32": fp32,
    "int8-dynamic": int8_dynamic,
    "int8-static": int8_static,
    "fp16": fp16,
    "int4": int4,
    "int4-mixed": int4_mixed,
}
# The recipe whose 8-bit layers the pipeline chooses by measuring (packager/mixed.py).
MIXED = "int4-mixed"
# Recipes that need calibration inputs (RecipeOptions.calibration).
CALIBRATED = {"int8-static"}


def parse_recipe(spec: str) -> dict[str, str]:
    """--recipe R (one recipe for every component: {"": R}) or per component, NAME=R[,NAME=R...]
    ({"encoder": R1, "decoder": R2}); PackagerError (usage) naming an unknown recipe."""
    from packager.errors import ExitCode, PackagerError, did_you_mean

    parts = [p.strip() for p in spec.split(",")] if "=" in spec else [spec]
    chosen: dict[str, str] = {}
    for part in parts:
        name, _, recipe = part.rpartition("=")
        name, recipe = name.strip(), recipe.strip()
        if "=" in spec and not name:
            raise PackagerError(f"--recipe {spec!r}: {part!r} names no component; write COMPONENT=RECIPE pairs "
                                "separated by commas, e.g. encoder=int8-dynamic,decoder=int4.", ExitCode.USAGE)
        if recipe not in RECIPES:
            raise PackagerError(f"unknown recipe {recipe!r}{did_you_mean(recipe, list(RECIPES))}; "
                                f"recipes: {', '.join(RECIPES)}.", ExitCode.USAGE)
        if name in chosen:
            raise PackagerError(f"--recipe {spec!r} names {name} twice; give each component one recipe.",
                                ExitCode.USAGE)
        chosen[name] = recipe
    return chosen


def recipe_label(recipes: dict[str, str]) -> str:
    """The per-component recipes as --recipe writes them (one name when every component shares it)."""
    if len(set(recipes.values())) == 1:
        return next(iter(recipes.values()))
    return ",".join(f"{k}={v}" for k, v in recipes.items())


def remedy(recipe: str, components: bool = False) -> str:
    """What to try when `recipe` changes the answers too much (verify's refusals end with it)."""
    mixed = f"--recipe {MIXED} (keeps the most sensitive layers at 8 bits), or " if recipe == "int4" else ""
    per_component = ", for the component that drifts: --recipe NAME=R" if components else ""
    return f"{mixed}a more precise recipe (int8-dynamic, fp16 or fp32{per_component})"
