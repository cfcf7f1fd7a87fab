"""Walking an ONNX model's graphs: the main graph and its subgraphs (If branches, Loop and Scan bodies)."""

from __future__ import annotations

import onnx


def all_graphs(graph: onnx.GraphProto) -> list[onnx.GraphProto]:
    """The graph and every subgraph in it, recursively."""
    found = [graph]
    for node in graph.node:
        for attr in node.attribute:
            for g in ([attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)):
                found += all_graphs(g)
    return found
