"""int4 and int4-mixed: MatMulNBits / GatherBlockQuantized weights at 4 bits (8 where int4-mixed keeps a
layer), and the tied embedding, quantized once as the lm_head's weight and read from its own mapped copy."""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from packager.decoder_config import LAST_POSITION
from packager.estimate_prepack import SLICE_BYTES
from packager.profile_types import Int4
from packager.recipes.common import (
    _QUANTIZED_OPS,
    RecipeOptions,
    RecipeResult,
    _locate_external_data,
    count_ops,
    embedding_file,
    load_tensors,
    needs_external_data,
    place_tables,
    save,
    table_locations,
    tensor_array,
)
from packager.recipes.layers import compose

# The untied embedding's table and scales (untie_embedding), named after the lm_head's MatMulNBits weight
UNTIED = ("_untied", "_untied_scales")


def int4(src: Path, dst: Path, options: RecipeOptions) -> RecipeResult:
    """4-bit weights, block-wise (MatMulNBits), the embedding table too (GatherBlockQuantized);
    activations stay float. A tied embedding / lm_head pair is quantized once, the embedding's copy of it mapped
    from a file of its own (untie_embedding). For decoder LLMs, whose weights are most of their memory."""
    return _nbits_recipe("int4", src, dst, dataclasses.replace(options, keep_8bit=(), nbits_dir=None))


def int4_mixed(src: Path, dst: Path, options: RecipeOptions) -> RecipeResult:
    """int4, but the layers named in `options.keep_8bit` at 8 bits (MatMulNBits bits=8, same blocks).
    Which layers: the fewest, most sensitive first, that keep the answers; the pipeline measures and
    chooses them (packager/mixed.py) and runs this recipe with its choice. With none kept it is int4."""
    return _nbits_recipe("int4-mixed", src, dst, options)


def _nbits_recipe(name: str, src: Path, dst: Path, options: RecipeOptions) -> RecipeResult:
    model, params = _nbits(src, options.int4, options.keep_8bit, options.progress, options.nbits_dir)
    # the untied embedding's table (untie_embedding), read a row at a time: in a file of its own, mapped; and the
    # source's mapped tables (the E-class per-layer embeddings) in theirs again, before the model is read whole:
    # E2B's is 2.24 GiB, over protobuf's 2 GB, and the save put it in the recipe's one data file
    tables = {i.name: embedding_file(dst) for i in model.graph.initializer if i.name.endswith(UNTIED)}
    tables |= table_locations(onnx.load(src, load_external_data=False))
    quantized = count_ops(model, _QUANTIZED_OPS)
    save(model, dst, needs_external_data(src))
    del model
    place_tables(dst, tables)
    return RecipeResult(name, params, quantized)


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
    quantized: onnx.ModelProto = quantizer.model.model
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
    settings = fitting_settings(src, settings)
    four, tied = quantized_nbits(src, settings, 4, progress, keep)
    eight = quantized_nbits(src, settings, 8, progress, keep)[0] if keep_8bit else None
    return mix_nbits(four, eight, keep_8bit, tied, settings)


def fitting_settings(src: Path, settings: Int4) -> Int4:
    """The profile's int4 settings as `src`'s weights take them (fitting_block): what every quantization of `src`
    and every mix of them uses (the recipe's, and packager/mixed.py's sensitivity candidates)."""
    return dataclasses.replace(settings, block_size=fitting_block(src, settings.block_size))


def fitting_block(src: Path, block_size: int) -> int:
    """The profile's block size, or where a weight's quantized axis is shorter (a tiny model's 64-wide layers under a
    block of 128), the largest power of two that fits them all, 16 at least (MatMulNBits' smallest): the quantizer
    pads a short row to a block, and the generation of such a GPT-2 then failed in a Reshape."""
    model = onnx.load(src, load_external_data=False)
    gemm_as_matmul(model.graph)
    dims = {i.name: list(i.dims) for i in model.graph.initializer}
    weight = {"MatMul": (1, 0), "Gather": (0, 1)}   # the op's weight input, and its quantized axis
    axes = [dims[n.input[i]][axis] for n in model.graph.node if n.op_type in weight
            for i, axis in [weight[n.op_type]] if len(dims.get(n.input[i], [])) == 2]
    shortest = min([block_size, *axes])
    return block_size if shortest >= block_size else max(16, 1 << (shortest.bit_length() - 1))


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
    # read back as made: what the quantizer left alone (a tied table, the E-class per-layer table) still in the
    # source's files by absolute path, which onnx.load refuses to follow; mix_nbits reads it in
    model = onnx.load(kept, load_external_data=False)
    _locate_external_data(model, keep)
    return model, (pair[0], pair[1]) if pair else None


def mix_nbits(four: onnx.ModelProto, eight: onnx.ModelProto | None, keep_8bit: tuple[str, ...],
              tied: tuple[str, str] | None, settings: Int4) -> tuple[onnx.ModelProto, dict[str, Any]]:
    """`four` (changed in place) with the layers in `keep_8bit` taken from `eight` (packager/mixed.py),
    the tied embedding rewired last and what stayed float read in, and the recipe's params."""
    params: dict[str, Any] = {"block_size": settings.block_size, "symmetric": settings.symmetric,
                              "accuracy_level": settings.accuracy_level}
    if keep_8bit:
        assert eight is not None
        params["mixed"] = compose(four, eight, keep_8bit)
    embedding = "float (no constant embedding table)"
    if tied:
        embedding = untie_embedding(four, *tied, settings.block_size)
    elif count_ops(four, {"GatherBlockQuantized"}):
        embedding = "int4 (GatherBlockQuantized, its own table)"
    if (sliced := slice_wide_heads(four)):
        params["sliced"] = sliced
    # What stayed float (norms, biases, what no quantized op reads) comes in from the source now,
    # each tensor once: onnx.save writes the model file from memory.
    load_tensors(four, None)
    return four, params | {"embedding": embedding}


def load_for_nbits(src: Path, settings: Int4) -> tuple[onnx.ModelProto, tuple[str, str] | None]:
    """The model as quantize_nbits takes it, its weights left in their files (located by absolute path),
    and its tied embedding pair (find_tied_embedding) where the settings let int4 keep it tied."""
    model = onnx.load(src, load_external_data=False)
    _locate_external_data(model, src.parent)
    gemm_as_matmul(model.graph)
    tied = find_tied_embedding(model) if settings.symmetric else None
    if not tied:
        # The quantizer reads a Gather's table with onnx's loader, which wants it inline: only this
        # table comes into memory (the embedding's fp32 bytes, a fifth of a 1B model's).
        load_tensors(model, {n.input[0] for n in model.graph.node if n.op_type == "Gather"})
    return model, tied


def gemm_as_matmul(graph: onnx.GraphProto) -> int:
    """Each Gemm(A, W, C) with a constant W (not transposed), alpha = beta = 1, as MatMul(A, W) + C, so that the
    n-bit quantizer, which takes MatMul only, quantizes W: GPT-2's Conv1D layers export as Gemm and stayed fp32
    under int4 (2.7 bytes per parameter). Meaning and weights unchanged (no tensor is read); how many rewritten."""
    from onnx import helper

    weights = {i.name for i in graph.initializer}
    nodes, rewritten = [], 0
    for node in graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if node.op_type != "Gemm" or len(node.input) != 3 or node.input[1] not in weights \
                or attrs.get("transA", 0) or attrs.get("transB", 0) or attrs.get("alpha", 1.0) != 1.0 \
                or attrs.get("beta", 1.0) != 1.0:
            nodes.append(node)
            continue
        product = f"{node.output[0]}/matmul"
        stem = node.name.removesuffix("Gemm") or f"{node.output[0]}/"
        nodes += [helper.make_node("MatMul", node.input[:2], [product], name=f"{stem}MatMul"),
                  helper.make_node("Add", [product, node.input[2]], list(node.output), name=f"{stem}Add")]
        rewritten += 1
    if rewritten:
        del graph.node[:]
        graph.node.extend(nodes)
    return rewritten


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
        result: list[onnx.NodeProto] = quantize(node, graph_stack)
        if constant_weight(node):
            done += 1
            progress(f"{done}/{total} weights at {bits} bits ({node.name or node.op_type})")
        return result

    quantizer.node_quantizer.quantize = counted




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


def untie_embedding(model: onnx.ModelProto, gather_name: str, head_weight: str, block_size: int) -> str:
    """The embedding Gather as a GatherBlockQuantized over its own copy of the lm_head's 4- or 8-bit weight (the
    MatMulNBits' B, [vocab, blocks, block * bits / 8] uint8, and its scales in the data's rank; the default zero
    point, 2^(bits-1), is the same on both ops), which the recipe then stores in a mapped file of its own
    (common.embedding_file). Why not one table for both: onnxruntime frees a MatMulNBits' original once it has packed it
    only where no other node reads it, so a shared table stayed resident whole beside the packed copy; mapped, the
    embedding's copy costs the rows the tokens read (docs/llms.md, "Gemma-4-E2B at int4")."""
    from onnx import helper, numpy_helper

    graph = model.graph
    head = next(n for n in graph.node if n.op_type == "MatMulNBits" and n.input[1] in (f"{head_weight}_Q4",
                                                                                      f"{head_weight}_Q8"))
    b_name, scales_name = head.input[1], head.input[2]
    bits = next((a.i for a in head.attribute if a.name == "bits"), 4)   # 4: MatMulNBits' default
    inits = {i.name: i for i in graph.initializer}
    vocab, blocks = (int(d) for d in inits[b_name].dims[:2])
    hidden = next(helper.get_attribute_value(a) for a in head.attribute if a.name == "K")
    # GatherBlockQuantized wants scales of data's rank; MatMulNBits wants [N, blocks]
    scales3d = numpy_helper.to_array(inits[scales_name]).reshape(vocab, blocks, 1)
    table_name, scales3d_name = b_name + UNTIED[0], b_name + UNTIED[1]
    graph.initializer.extend([numpy_helper.from_array(numpy_helper.to_array(inits[b_name]), table_name),
                              numpy_helper.from_array(scales3d, scales3d_name)])
    index = next(i for i, n in enumerate(graph.node) if n.name == gather_name)
    gather = graph.node[index]
    table, ids, out = gather.input[0], gather.input[1], gather.output[0]
    p = f"{gather_name}_tied"
    graph.initializer.append(numpy_helper.from_array(np.array([hidden], dtype=np.int64), f"{p}/hidden"))
    nodes = [
        helper.make_node("GatherBlockQuantized", [table_name, ids, scales3d_name], [f"{p}/blocks"],
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
    return f"int{bits}, tied: GatherBlockQuantized reads its own copy of the lm_head's MatMulNBits weight, mapped"


def slice_wide_heads(model: onnx.ModelProto) -> dict[str, int]:
    """Each MatMulNBits whose quantized weight passes SLICE_BYTES (a 262,144-token lm_head: 192 MiB at 4 bits) as
    that many MatMulNBits over slices of its output rows, their outputs concatenated: the same logits. Why:
    onnxruntime holds a weight's original beside the copy it packs until the copy is made (the load's peak: the
    largest original; E2B's widths: 619 MiB at load where the run needs 523), and an inline weight's proto bytes
    beside its tensor while it loads. Only where the logits are the last position's (the concatenation holds the
    logits twice: one row of them); name -> slices."""
    from onnx import helper, numpy_helper

    graph = model.graph
    if not _last_position_only(model):
        return {}
    inits = {i.name: i for i in graph.initializer}
    sliced: dict[str, int] = {}
    for index in reversed(range(len(graph.node))):
        node = graph.node[index]
        weight = inits.get(node.input[1]) if node.op_type == "MatMulNBits" and len(node.input) > 2 else None
        if weight is None or len(node.input) > 4 or len(weight.raw_data) <= SLICE_BYTES:
            continue   # small, or a g_idx / bias input this rewrite does not carry
        count = -(-len(weight.raw_data) // SLICE_BYTES)
        rows = int(weight.dims[0])
        step = -(-rows // count)
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        # each input by its N rows ([N, ...], or flat [N * k]), read once
        arrays = {name: numpy_helper.to_array(inits[name]) for name in node.input[1:] if name}
        nodes, outputs = [], []
        for n, start in enumerate(range(0, rows, step)):
            stop = min(rows, start + step)
            names = [_rows(arrays[name], rows, start, stop, f"{name}_slice{n}", graph) if name else ""
                     for name in node.input[1:]]
            outputs.append(f"{node.output[0]}_slice{n}")
            nodes.append(helper.make_node("MatMulNBits", [node.input[0], *names], [outputs[-1]],
                                          name=f"{node.name}_slice{n}", domain=node.domain,
                                          **attrs | {"N": stop - start}))
        nodes.append(helper.make_node("Concat", outputs, list(node.output), name=f"{node.name}_slices", axis=-1))
        del graph.node[index]
        for offset, new in enumerate(nodes):
            graph.node.insert(index + offset, new)
        for name in arrays:
            if not any(name in other.input for other in graph.node):
                graph.initializer.remove(inits[name])
        sliced[node.name] = len(nodes) - 1
    return sliced


def _rows(array: np.ndarray, rows: int, start: int, stop: int, name: str, graph: onnx.GraphProto) -> str:
    """Rows [start, stop) of a MatMulNBits input laid out by its N rows ([N, ...], or flat [N * k]) as a new
    initializer `name` of the same layout; its name."""
    from onnx import numpy_helper

    part = array.reshape(rows, -1)[start:stop]
    shape = (stop - start, *array.shape[1:]) if array.shape[0] == rows else (-1,)
    graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(part.reshape(shape)), name))
    return name


def _last_position_only(model: onnx.ModelProto) -> bool:
    """The logits are one position's: the E-class exporter's fixed 1, or onnx_rewrite.last_position_logits' Slice."""
    logits = next((o for o in model.graph.output if o.name == "logits"), None)
    dims = logits.type.tensor_type.shape.dim if logits is not None else []
    return (len(dims) > 1 and dims[1].dim_value == 1) or any(n.name.endswith(LAST_POSITION) for n in model.graph.node)
