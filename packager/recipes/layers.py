"""The layers of a quantized decoder, by name ("layers.3", "lm_head"), and the int4-mixed composition of a 4-bit and
an 8-bit quantization of one model: the recipe's part of mixed precision (packager/mixed.py measures which layers
to keep at 8 bits, packager/mixed_search.py searches how many)."""

from __future__ import annotations

import re
from typing import Any

import onnx

from packager.estimate import weight_bytes

_BLOCK = re.compile(r"^[A-Za-z_]+\.\d+$")   # a path segment naming a repeated block: "layers.3", "h.0"
_NBITS = ("MatMulNBits", "GatherBlockQuantized")



def layer_of(node: onnx.NodeProto) -> str:
    """The layer a quantized node belongs to, from its name's path ("/model/layers.3/mlp/up_proj/MatMul_Q4"),
    else its output's (the quantizers keep both; an lm_head's output is just "logits")."""
    path = node.name if "/" in node.name else node.output[0]
    segments = [s for s in path.split("/") if s][:-1]
    block = next((s for s in segments if _BLOCK.match(s)), None)
    return block or (segments[-1] if segments else node.output[0])


def _weight(node: onnx.NodeProto) -> str:
    """A quantized node's packed weight: MatMulNBits' B, GatherBlockQuantized's table."""
    return str(node.input[1] if node.op_type == "MatMulNBits" else node.input[0])


def layer_bytes(model: onnx.ModelProto) -> dict[str, int]:
    """Bytes of each layer's quantized weights (packed weights, scales, zero points)."""
    sizes = weight_bytes(model)[2]
    found: dict[str, int] = {}
    for node in model.graph.node:
        if node.op_type in _NBITS:
            found[layer_of(node)] = found.get(layer_of(node), 0) + sum(sizes.get(i, 0) for i in node.input)
    return found


def compose(four: onnx.ModelProto, eight: onnx.ModelProto, keep_8bit: tuple[str, ...]) -> dict[str, Any]:
    """Replace, in `four`, the quantized nodes of the layers in `keep_8bit` (and their weights) by
    `eight`'s: the two quantizations of the same model write their nodes in the same places, each
    node still producing the original MatMul's output. Returns the recipe's "mixed" params."""
    bytes4, bytes8 = layer_bytes(four), layer_bytes(eight)
    unknown = sorted(set(keep_8bit) - set(bytes8))
    if unknown:
        raise ValueError(f"no quantized layer named {unknown[0]!r}")
    by_output = {n.output[0]: n for n in eight.graph.node if n.op_type in _NBITS}
    inits8 = {i.name: i for i in eight.graph.initializer}
    names4 = {i.name for i in four.graph.initializer}
    dropped: set[str] = set()
    added: dict[str, None] = {}      # ordered: the file comes out the same for the same choice
    # a weight that nodes of two layers share (Gemma 3n's AltUp router, read in predict and in correct) has one
    # quantization: its readers go to 8 bits together
    chosen = {_weight(n) for n in four.graph.node if n.op_type in _NBITS and layer_of(n) in keep_8bit}
    for index, node in enumerate(four.graph.node):
        if node.op_type in _NBITS and _weight(node) in chosen and node.output[0] in by_output:
            replacement = by_output[node.output[0]]
            dropped.update(i for i in node.input if i in names4)
            added.update(dict.fromkeys(i for i in replacement.input if i in inits8))
            four.graph.node[index].CopyFrom(replacement)
    # Both quantizations name the scales alike ("<weight>_scales"): the 4-bit ones go before the 8-bit ones come.
    kept = [i for i in four.graph.initializer if i.name not in dropped]
    del four.graph.initializer[:]
    four.graph.initializer.extend(kept + [inits8[name] for name in added])
    # An untied embedding table's 8-bit form is packager's own GatherBlockQuantized (recipes._embedding_8bit).
    cost = sum(bytes8[layer] - bytes4[layer] for layer in keep_8bit)
    return {"layers_8bit": list(keep_8bit), "layers": len(bytes8), "cost_bytes": cost,
            "layer_bytes": {layer: {"int4": bytes4[layer], "int8": bytes8[layer]} for layer in keep_8bit}}
