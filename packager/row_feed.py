"""A decoder's lookup tables fed by its loop a row at a time (issue 20): each table that estimate.table_files finds
(an E-class model's per-layer embeddings, a tied decoder's embedding copy; read only by Gathers) leaves the graph and
becomes one of its inputs, which the loop fills with the rows of the pass's tokens, read from the table's file with
positional reads (pread; targets/runtime/session.py RowFeeds, the mobile examples' readRows).

Why not a memory-mapped initializer, as before: a process keeps every page of a mapping it has read until it hands
them back, and only a loop that calls madvise can (run.py did, every 64 tokens). A phone's app, whose loop is the
user's and whose language has no madvise (Kotlin's android.system.Os lacks it), held the pages of every row the
context's tokens read: E2B at 8K, 202 MiB above run.py's figure, which kept the phone under 2,816 tokens. Read with
pread, a row is in the page cache, which the kernel reclaims as it needs, never in the process: any loop holds the
rows of one pass, and the rule is the same on every device.

    feed_rows(path) -> list[RowTable]     # rewrites the model at `path` (its data files untouched)
    row_tables(model) -> list[RowTable]   # what a rewritten model feeds (packager/row_tables.py, its metadata)

The rewrite keeps each reader as it was (Gather, GatherElements, GatherBlockQuantized and its dequantization) and
turns it on the rows fed: the table is the input reshaped to [tokens, *row], the indices the tokens' positions in
the pass (a Range shaped as the old indices). The loop reads, for token id t, row t of each table, or row 0 where t
is past the table's rows (Gemma 3n's per-layer table is shorter than its vocabulary, and the graph read row 0 there).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import helper

from packager.graphs import all_graphs, tensor_bytes
from packager.row_tables import ROW_READERS, RowTable, record, table_files

SUFFIX = "/rows"   # a table's rows in the graph: the input reshaped to [tokens, *row]


def feed_rows(path: Path) -> list[RowTable]:
    """The lookup tables of the model at `path` (estimate.table_files) as inputs the loop fills, the model saved
    again with their record (row_tables.record); its external data is neither read nor moved. Nothing where it has
    none, or no input_ids (the rows follow the tokens)."""
    model = onnx.load(path, load_external_data=False)
    files = table_files(model)
    ids = next((i for i in model.graph.input if i.name == "input_ids"), None)
    if not files or ids is None or _read_in_subgraphs(model, {t.name for ts in files.values() for t in ts}):
        return []
    token_dims = [d.dim_param or d.dim_value for d in ids.type.tensor_type.shape.dim]
    tables = [_table(t, location) for location, tensors in files.items() for t in tensors]
    wanted = {t.input for t in tables}
    for init in [t for t in model.graph.initializer if t.name in wanted]:
        model.graph.initializer.remove(init)
    model.graph.input.extend(
        helper.make_tensor_value_info(t.input, helper.np_dtype_to_tensor_dtype(np.dtype(t.dtype)),
                                      [*token_dims, *t.row])
        for t in tables)
    # the tables' reshapes first (they read graph inputs only), each reader's positions just before it
    nodes = [n for t in tables for n in _rows_nodes(t)]
    positions: dict[str, str] = {}
    for original in model.graph.node:
        node = onnx.NodeProto()
        node.CopyFrom(original)
        reads = [i for i, name in enumerate(node.input) if name in wanted and (node.op_type, i) in ROW_READERS]
        if reads:
            for i in reads:
                node.input[i] += SUFFIX
            if node.input[1] not in positions:
                positions[node.input[1]] = f"{node.input[1]}/positions"
                nodes += _position_nodes(node.input[1], positions[node.input[1]])
            node.input[1] = positions[node.input[1]]
        nodes.append(node)
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    record(model, tables)
    onnx.save(model, path)
    return tables


def _read_in_subgraphs(model: onnx.ModelProto, tables: set[str]) -> bool:
    """Whether a branch's nodes read one of `tables` (optimum's merged decoders): such a model keeps them mapped."""
    return any(name in tables for g in all_graphs(model.graph) if g is not model.graph for n in g.node
               for name in n.input)


def _table(t: onnx.TensorProto, location: str) -> RowTable:
    info = {e.key: e.value for e in t.external_data}
    rows = int(t.dims[0])
    return RowTable(t.name, location, int(info.get("offset", "0")), tensor_bytes(t) // rows, rows,
                    np.dtype(helper.tensor_dtype_to_np_dtype(t.data_type)).name, tuple(int(d) for d in t.dims[1:]))


def _rows_nodes(t: RowTable) -> list[onnx.NodeProto]:
    """The fed input as its readers took the table: [tokens, *row]."""
    shape = f"{t.input}{SUFFIX}/shape"
    return [helper.make_node("Constant", [], [shape], name=shape,
                             value=helper.make_tensor(shape, onnx.TensorProto.INT64, [1 + len(t.row)], [-1, *t.row])),
            helper.make_node("Reshape", [t.input, shape], [t.input + SUFFIX], name=t.input + SUFFIX)]


def _position_nodes(indices: str, out: str) -> list[onnx.NodeProto]:
    """`out`: 0, 1, ... in the shape of `indices`: each index's token's row among the rows fed, which follow the
    tokens in order."""
    def const(name: str, value: int) -> onnx.NodeProto:
        return helper.make_node("Constant", [], [f"{out}/{name}"], name=f"{out}/{name}",
                                value=helper.make_tensor(f"{out}/{name}", onnx.TensorProto.INT64, [], [value]))

    return [const("zero", 0), const("one", 1),
            helper.make_node("Size", [indices], [f"{out}/count"], name=f"{out}/Size"),
            helper.make_node("Shape", [indices], [f"{out}/shape"], name=f"{out}/Shape"),
            helper.make_node("Range", [f"{out}/zero", f"{out}/count", f"{out}/one"], [f"{out}/range"],
                             name=f"{out}/Range"),
            helper.make_node("Reshape", [f"{out}/range", f"{out}/shape"], [out], name=f"{out}/Reshape")]
