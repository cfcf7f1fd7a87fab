"""The run phase of the memory estimate (packager/estimate.py): the largest set of activations alive at once, from
the graph with the sample's shapes inferred through it, a decoder's KV cache at a context, and a decoder graph's
shape as the decoder peak's rule reads it (packager/decoder_peak.py); and the constants the runtime folds at load,
in every graph (folded_in_all_graphs)."""

from __future__ import annotations

import math
from collections import Counter
from typing import Any

import onnx
from onnx import numpy_helper

from packager.decoder_config import FULL, SLIDING, WINDOW_AXIS, LayerAttention, past_axes
from packager.decoder_peak import DecoderShape
from packager.graphs import all_graphs


def concrete_shapes(model: onnx.ModelProto, shapes: dict[str, tuple[int, ...]]) -> onnx.ModelProto:
    """A weightless copy of the model with the graph inputs fixed to concrete shapes, shape-inferred."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    for g in all_graphs(copy.graph):
        for t in g.initializer:
            # Keep dims and type, drop the bytes: shape inference needs no values, except those of
            # small integer tensors, which may be shapes (a Reshape's target; tf2onnx computes them in int32).
            if t.data_type in (onnx.TensorProto.INT64, onnx.TensorProto.INT32) and math.prod(t.dims) <= 64 \
                    and t.data_location != onnx.TensorProto.EXTERNAL:
                continue
            t.ClearField("raw_data")
            t.ClearField("external_data")
            t.data_location = onnx.TensorProto.DEFAULT
    for g in all_graphs(copy.graph):
        _standard_stand_ins(g)
    # a named axis takes its value wherever it appears (the rows fed beside input_ids, packager/row_feed.py: its
    # batch and sequence)
    named = {d.dim_param: int(value) for inp in copy.graph.input if inp.name in shapes
             for d, value in zip(inp.type.tensor_type.shape.dim, shapes[inp.name]) if d.dim_param}
    for inp in copy.graph.input:
        dims = inp.type.tensor_type.shape.dim
        values = shapes[inp.name] if inp.name in shapes else [named.get(d.dim_param) for d in dims]
        for d, value in zip(dims, values):
            if value is not None:
                d.Clear()
                d.dim_value = int(value)
    try:
        return onnx.shape_inference.infer_shapes(copy, strict_mode=False, data_prop=True)
    except Exception:  # inference is best effort: unknown shapes fall back below
        return copy


def _standard_stand_ins(graph: onnx.GraphProto) -> None:
    """Replace the int4 recipe's contrib ops, which ONNX shape inference does not know, by the standard
    op of the same output shape over a weightless stand-in weight, so that shapes flow past them:
    MatMulNBits (A [.., K], attribute N) is a MatMul by [K, N]; GatherBlockQuantized (data [rows,
    K/2] packed 4-bit) is a Gather from [rows, K]. Both output the scales' type."""
    types = {t.name: t.data_type for t in graph.initializer}
    dims = {t.name: list(t.dims) for t in graph.initializer}
    _fed_tables(graph, types, dims)
    for node in graph.node:
        if node.domain != "com.microsoft" or node.op_type not in ("MatMulNBits", "GatherBlockQuantized"):
            continue
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        scales = node.input[2] if len(node.input) > 2 else ""
        dtype = types.get(scales, onnx.TensorProto.FLOAT)
        weight = f"{node.output[0]}::weight"
        if node.op_type == "MatMulNBits":
            shape = [int(attrs["K"]), int(attrs["N"])]
            replacement = onnx.helper.make_node("MatMul", [node.input[0], weight], [node.output[0]], name=node.name)
        else:
            data = dims.get(node.input[0])
            if not data or int(attrs.get("gather_axis", 0)) != 0:
                continue
            packed = types.get(node.input[0]) == onnx.TensorProto.UINT8
            shape = [*data[:-1], data[-1] * (8 // int(attrs.get("bits", 4)) if packed else 1)]
            replacement = onnx.helper.make_node("Gather", [weight, node.input[1]], [node.output[0]], name=node.name)
        graph.initializer.append(onnx.TensorProto(name=weight, data_type=dtype, dims=shape))
        node.CopyFrom(replacement)


def _fed_tables(graph: onnx.GraphProto, types: dict[str, int], dims: dict[str, list[int]]) -> None:
    """The tables a decoder takes as inputs (packager/row_feed.py: a graph input reshaped by a Constant to
    [-1, *row]) as `types` and `dims` know an initializer, one row long: a stand-in needs the row, not the rows."""
    inputs = {i.name: i.type.tensor_type.elem_type for i in graph.input}
    constants = {n.output[0]: list(numpy_helper.to_array(n.attribute[0].t).ravel()) for n in graph.node
                 if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value"}
    for node in graph.node:
        if node.op_type == "Reshape" and node.input[0] in inputs and node.input[1] in constants:
            types[node.output[0]] = inputs[node.input[0]]
            dims[node.output[0]] = [max(1, int(d)) for d in constants[node.input[1]]]


def value_sizes(graph: onnx.GraphProto) -> dict[str, int | None]:
    sizes: dict[str, int | None] = {}
    for v in [*graph.value_info, *graph.output, *graph.input]:
        t = v.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim]
        if not t.elem_type or not t.HasField("shape") or any(d is None for d in dims):
            sizes.setdefault(v.name, None)  # an unshaped declaration never hides an inferred shape
            continue
        itemsize = onnx.helper.tensor_dtype_to_np_dtype(t.elem_type).itemsize
        sizes[v.name] = math.prod(dims) * itemsize  # type: ignore[arg-type]
    return sizes


# Ops whose output is their first input's buffer, reshaped (ONNX Runtime's CPU kernels declare
# Alias(0, 0)): no allocation of their own; the input's buffer lives as long as the output does.
ALIAS_OPS = {"Reshape", "Squeeze", "Unsqueeze", "Flatten", "Identity"}


def _sizes_through_aliases(graph: onnx.GraphProto, sizes: dict[str, int | None]) -> None:
    """An alias op keeps its input's byte size: where shape inference settled only one side
    (an Expand's output before a Reshape, say), the other side takes it."""
    for node in reversed(graph.node):
        if node.op_type in ALIAS_OPS and node.input and node.output:
            src, dst = node.input[0], node.output[0]
            if sizes.get(src) is None and sizes.get(dst) is not None:
                sizes[src] = sizes[dst]
    for node in graph.node:
        if node.op_type in ALIAS_OPS and node.input and node.output:
            src, dst = node.input[0], node.output[0]
            if sizes.get(dst) is None and sizes.get(src) is not None:
                sizes[dst] = sizes[src]


# Integer convolutions that expand their input into a column buffer of uint8 (im2col) for the whole output
# image before the GEMM (onnxruntime's ConvInteger and QLinearConv CPU kernels: kernel_dim x output_image_size
# bytes, taken from the arena while the node runs, outside the memory pattern). An fp32 Conv runs MLAS's
# blocked (NCHWc) or segmented kernels, with no image-sized buffer: measured none on a 32x160x160 3x3 Conv.
IM2COL_OPS = {"ConvInteger", "QLinearConv"}


def _dims(graph: onnx.GraphProto) -> dict[str, list[int | None]]:
    dims: dict[str, list[int | None]] = {t.name: [int(d) for d in t.dims] for t in graph.initializer}
    for v in [*graph.value_info, *graph.output, *graph.input]:
        shape = v.type.tensor_type.shape
        dims.setdefault(v.name, [d.dim_value if d.HasField("dim_value") else None for d in shape.dim])
    return dims


def conv_scratch(graph: onnx.GraphProto) -> dict[int, int]:
    """Bytes of the column buffer each integer Conv node (by index) holds while it runs: (its weight's input
    channels per group x kernel positions) x output positions, one byte each; none for a 1x1 stride-1 Conv."""
    dims = _dims(graph)
    scratch: dict[int, int] = {}
    for i, node in enumerate(graph.node):
        if node.op_type not in IM2COL_OPS:
            continue
        weight = dims.get(node.input[3 if node.op_type == "QLinearConv" else 1]) or []
        out = dims.get(node.output[0]) or []
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        kernel, outputs = weight[2:], out[2:]
        if not kernel or not outputs or any(d is None for d in [*weight[1:], *outputs]):
            continue
        if all(k == 1 for k in kernel) and all(s == 1 for s in attrs.get("strides", [1])) \
                and not any(attrs.get("pads", [0])):
            continue
        scratch[i] = math.prod(weight[1:]) * math.prod(outputs)  # type: ignore[arg-type]
    return scratch


def activation_peak(graph: onnx.GraphProto, constants: set[str], held: frozenset[str] = frozenset()) -> int:
    """Peak bytes of intermediate tensors alive at once, walking the nodes in order (liveness).

    A tensor lives from its producer to its last consumer; graph outputs live to the end. An
    alias op's output shares its input's buffer. A node with subgraphs adds its largest branch's
    own peak while it runs. Tensors whose shape inference could not settle count as large as the
    node's largest input (a Concat's: their sum), and pass that size on downstream. `held` inputs
    (a decoder's past key/values, counted on their own) are not live here, but size what is made
    from them. An integer Conv's column buffer (conv_scratch) is live while its node runs.
    """
    sizes = value_sizes(graph)
    scratch = conv_scratch(graph)
    _sizes_through_aliases(graph, sizes)
    root: dict[str, str] = {}  # alias output -> the buffer it shares
    for node in graph.node:
        if node.op_type in ALIAS_OPS and node.input and node.output and node.input[0]:
            root[node.output[0]] = root.get(node.input[0], node.input[0])
    last_use: dict[str, int] = {}
    for i, node in enumerate(graph.node):
        for name in node.input:
            last_use[root.get(name, name)] = i
        for attr in node.attribute:  # subgraphs read outer tensors too
            for g in ([attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)):
                for sub in g.node:
                    for name in sub.input:
                        name = root.get(name, name)
                        last_use[name] = max(last_use.get(name, i), i)
    end = len(graph.node)
    outputs = {root.get(o.name, o.name) for o in graph.output}
    for name in outputs:
        last_use[name] = end
    live: dict[str, int] = {}
    for inp in graph.input:
        if inp.name not in constants and inp.name not in held and sizes.get(inp.name):
            live[inp.name] = sizes[inp.name] or 0
    peak = sum(live.values())
    for i, node in enumerate(graph.node):
        known = [sizes.get(n) or 0 for n in node.input if n and (n not in constants or n in held)]
        fallback = sum(known) if node.op_type == "Concat" else max(known, default=0)
        for name in node.output:
            if name and sizes.get(name) is None:
                sizes[name] = fallback  # and so for the nodes downstream, which size from it
            if name and name not in root and name not in constants:  # folded at load: a weight
                live[name] = sizes[name] or 0
        inner = scratch.get(i, 0)
        for attr in node.attribute:
            for g in ([attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)):
                inner = max(inner, activation_peak(g, constants, held))
        peak = max(peak, sum(live.values()) + inner)
        for name in [n for n in live if last_use.get(n, -1) <= i and n not in outputs]:
            del live[name]
    return peak


def is_past(name: str) -> bool:
    return name.startswith(("past_key_values", "past."))


def kv_cache_bytes(model: onnx.ModelProto, context: int | None,
                   shapes: dict[str, tuple[int, ...]] | None = None) -> int:
    """Past key/value inputs (`past_key_values.N.key/value`) at `context` tokens, batch 1. `shapes`: the pasts'
    shapes at a step; an encoder-decoder's cross-attention cache (".encoder.") is taken as given (the encoder's
    length), the others give their open axes but the sequence, which takes the context."""
    if not context:
        return 0
    total = 0
    for inp in model.graph.input:
        if not is_past(inp.name):
            continue
        t = inp.type.tensor_type
        given = (shapes or {}).get(inp.name)
        if given is not None and ".encoder." in inp.name:
            total += math.prod(given) * onnx.helper.tensor_dtype_to_np_dtype(t.elem_type).itemsize
            continue
        dims = [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim]
        # [batch, kv_heads, past_sequence, head_dim]: the open sequence axis takes the context (a sliding layer's,
        # WINDOW_AXIS, its past at the step and the new token: step_shapes gives it its window); another
        # open axis (onnxruntime-genai's builder writes head_dim as the symbol kv_cache_dim) its size at a step.
        axis = past_axes([d.dim_param or d.dim_value for d in t.shape.dim])[0]   # the positions'
        windowed = given is not None and len(t.shape.dim) > 2 and t.shape.dim[axis].dim_param == WINDOW_AXIS
        sequence = min(context, given[axis] + 1) if windowed and given is not None else context
        fixed = [d if d is not None else 1 if i == 0 else sequence if i == axis or given is None else given[i]
                 for i, d in enumerate(dims)]
        total += math.prod(fixed) * onnx.helper.tensor_dtype_to_np_dtype(t.elem_type).itemsize
    return total


def decoder_shape(model: onnx.ModelProto, shapes: dict[str, tuple[int, ...]]) -> tuple[DecoderShape, int] | None:
    """A decoder graph's shape as the decoder peak's rule reads it (packager/decoder_peak.py), and its KV cache's
    element size in bits; None for a graph with no past key/value inputs. Each layer from its past key input
    (KV heads and head size: the graph's, else their size at a step, `shapes`) and the attention node reading it
    (GroupQueryAttention: its heads and sliding window); widths from the matmuls' weights (hidden: the commonest
    input width; the MLP: the widest output but the vocabulary's), the vocabulary and logits positions from the
    logits output."""
    inputs = {i.name: i for i in model.graph.input}
    keys = [n for n in inputs if is_past(n) and n.endswith(".key")]
    if not keys:
        return None
    readers = {node.input[3]: node for node in model.graph.node
               if node.op_type == "GroupQueryAttention" and len(node.input) > 3}
    attention, heads, bits = [], 0, 0
    for name in keys:
        t = inputs[name].type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim]
        given = shapes.get(name, (1, 0, 0, 0))
        axis = past_axes([d.dim_param or d.dim_value for d in t.shape.dim])[1]   # the KV heads'
        kv_heads, head_dim = dims[axis] or given[axis], dims[3] or given[3]
        attrs = attributes(readers[name]) if name in readers else {}
        window = max(int(attrs.get("local_window_size", -1)), 0)
        heads = heads or int(attrs.get("num_heads", 0))
        bits = int(attrs.get("kv_cache_bit_width", 0)) or 8 * onnx.helper.tensor_dtype_to_np_dtype(t.elem_type).itemsize
        attention.append(LayerAttention(SLIDING if window else FULL, int(kv_heads), int(head_dim), window, True))
    widths = _matmul_widths(model)
    logits = next((o for o in model.graph.output if o.name == "logits"), None)
    logits_dims = [d.dim_value if d.HasField("dim_value") else 0 for d in logits.type.tensor_type.shape.dim] \
        if logits is not None else []
    vocab = logits_dims[-1] if logits_dims else 0
    hidden = Counter(k for k, _ in widths).most_common(1)[0][0] if widths else 0
    intermediate = max((n for _, n in widths if n != vocab), default=0)
    heads = heads or (hidden // attention[0].head_dim if attention[0].head_dim else 0)
    positions = logits_dims[1] if len(logits_dims) == 3 else 0
    return DecoderShape(tuple(attention), heads, hidden, intermediate, vocab, positions), bits


def attributes(node: onnx.NodeProto) -> dict[str, Any]:
    """A node's attributes by name, as values."""
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _matmul_widths(model: onnx.ModelProto) -> list[tuple[int, int]]:
    """(input width, output width) of each matmul by a stored weight: MatMulNBits' K and N, a MatMul's [K, N]."""
    dims = {t.name: list(t.dims) for t in model.graph.initializer}
    widths = []
    for node in model.graph.node:
        if node.op_type == "MatMulNBits":
            attrs = attributes(node)
            widths.append((int(attrs["K"]), int(attrs["N"])))
        elif node.op_type == "MatMul" and len(dims.get(node.input[1], [])) == 2:
            k, n = dims[node.input[1]]
            widths.append((int(k), int(n)))
    return widths


# Ops ONNX Runtime's constant folding leaves alone even on constant inputs.
NOT_FOLDED = {"QuantizeLinear", "DequantizeLinear", "RandomNormal", "RandomUniform", "RandomNormalLike",
              "RandomUniformLike", "Multinomial", "Bernoulli"}


def folded_constants(graph: onnx.GraphProto, constants: set[str],
                     sizes: dict[str, int | None]) -> tuple[dict[str, int], set[str]]:
    """What the runtime's constant folding makes at load: the outputs of nodes whose every input is
    a constant (a Transpose of a tied embedding table for the lm_head, say) that the rest of the
    graph reads, by bytes; and the constants only folding read, which it frees."""
    folded: set[str] = set()
    for node in graph.node:
        if node.op_type in NOT_FOLDED or node.op_type == "Constant" or not node.input \
                or any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute):
            continue
        if all(not i or i in constants or i in folded for i in node.input):
            folded.update(o for o in node.output if o)
    read_by_rest = {i for n in graph.node if not set(n.output) <= folded for i in n.input} \
        | {o.name for o in graph.output}
    made = {o: sizes.get(o) or 0 for o in folded if o in read_by_rest}
    read_by_folding = {i for n in graph.node if n.output and set(n.output) <= folded for i in n.input}
    return made, {c for c in read_by_folding & constants if c not in read_by_rest}


def folded_in_all_graphs(graph: onnx.GraphProto, constants: set[str]) -> tuple[dict[str, int], set[str]]:
    """folded_constants over the graph and each subgraph: the runtime folds an If branch's or a Loop body's
    constants at load as it does the main graph's (silero-vad: each LSTM's weights sliced and unsqueezed into
    2 MiB more, inside its If branches, which put its load 7 MiB above the estimate's high side). A subgraph
    reads the outer graphs' constants as its own."""
    folded: dict[str, int] = {}
    freed: set[str] = set()
    for g in all_graphs(graph):
        made, only_folding = folded_constants(g, constants | set(folded), value_sizes(g))
        folded |= made
        freed |= only_folding
    return folded, freed
