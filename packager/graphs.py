"""Walking an ONNX model's graphs: the main graph and its subgraphs (If branches, Loop and Scan bodies)."""

from __future__ import annotations

import math

import onnx


def all_graphs(graph: onnx.GraphProto) -> list[onnx.GraphProto]:
    """The graph and every subgraph in it, recursively."""
    found = [graph]
    for node in graph.node:
        for attr in node.attribute:
            for g in ([attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)):
                found += all_graphs(g)
    return found


def tensor_bytes(t: onnx.TensorProto) -> int:
    """A tensor's bytes as stored: external data by its recorded length, int4 two to a byte."""
    if t.data_location == onnx.TensorProto.EXTERNAL:
        info = {e.key: e.value for e in t.external_data}
        if "length" in info:
            return int(info["length"])
    itemsize = onnx.helper.tensor_dtype_to_np_dtype(t.data_type).itemsize if t.data_type else 4
    elements: int = math.prod(t.dims)
    if t.data_type in (onnx.TensorProto.INT4, onnx.TensorProto.UINT4):
        return math.ceil(elements / 2)
    return elements * itemsize
