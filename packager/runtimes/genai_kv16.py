"""A 16-bit KV cache for the builder's CPU graphs (issue 19, item 3).

The builder writes int4 CPU models with fp32 inputs and outputs, so its KV cache is fp32, and it has no option
for another io type on the CPU. ONNX Runtime 1.32's CPU GroupQueryAttention runs in fp16 as well (measured: one
layer, 4K past, 2 threads: 18.7 ms a step in fp16 against 27.4 in fp32, outputs within 6e-5), and genai sizes its
cache from the model's past_key_values type. So each attention node gets fp16 inputs (Casts of its q/k/v and of
the rotary caches, which ONNX Runtime folds into constants at load) and its output is cast back to fp32: the
cache, past and present, is fp16 (half the bytes) and everything else stays as the builder made it.
"""

from __future__ import annotations

import onnx
from onnx import TensorProto, helper

ATTENTION = "GroupQueryAttention"
ACTIVATIONS = (0, 1, 2)     # query (or packed qkv), key, value
ROTARY = (7, 8)             # cos_cache, sin_cache
CACHE_PREFIXES = ("past_key_values.", "present.")


def kv_to_fp16(model: onnx.ModelProto) -> int:
    """`model` with an fp16 KV cache, in place; the number of attention nodes changed (0: nothing to do)."""
    graph = model.graph
    if not any(n.op_type == ATTENTION for n in graph.node):
        return 0
    for value in (*graph.input, *graph.output):
        tensor = value.type.tensor_type
        if value.name.startswith(CACHE_PREFIXES) and tensor.elem_type == TensorProto.FLOAT:
            tensor.elem_type = TensorProto.FLOAT16
    rotary: dict[str, onnx.NodeProto] = {}   # one Cast per rotary table, shared by the layers
    nodes: list[onnx.NodeProto] = []
    changed = 0
    for node in graph.node:
        if node.op_type == ATTENTION:
            nodes.extend(_to_fp16(node, rotary))
            changed += 1
        else:
            nodes.append(node)
    del graph.node[:]
    graph.node.extend([*rotary.values(), *nodes])
    return changed


def _cast(name: str, to: int, out: str) -> onnx.NodeProto:
    return helper.make_node("Cast", [name], [out], name=f"{out}/Cast", to=to)


def _to_fp16(node: onnx.NodeProto, rotary: dict[str, onnx.NodeProto]) -> list[onnx.NodeProto]:
    """The Casts in front of `node`, `node` on fp16, and the Cast of its output back to fp32."""
    before = []
    for i in ACTIVATIONS:
        if i < len(node.input) and node.input[i]:
            before.append(_cast(node.input[i], TensorProto.FLOAT16, f"{node.input[i]}/fp16"))
            node.input[i] = before[-1].output[0]
    for i in ROTARY:
        if i < len(node.input) and node.input[i]:
            name = node.input[i]
            rotary.setdefault(name, _cast(name, TensorProto.FLOAT16, f"{name}/fp16"))
            node.input[i] = rotary[name].output[0]
    output = node.output[0]
    node.output[0] = f"{output}/fp16"
    return [*before, node, _cast(node.output[0], TensorProto.FLOAT, output)]
