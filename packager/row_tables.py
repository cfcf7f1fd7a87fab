"""A decoder's lookup tables, read a row per token (an E-class model's per-layer embeddings, a tied embedding's copy):
those still in the graph, memory-mapped (table_files), and those the model takes as inputs, which its loop fills a
pass at a time (packager/row_feed.py makes them; targets/runtime/session.py RowFeeds and the mobile examples fill
them): the record of where each one's rows are, and the bytes a pass or a context holds (the estimate's and plan's
`table_rows`)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

import onnx

from packager.graphs import all_graphs, tensor_bytes

ROWS_KEY = "packager.rows"   # the model's metadata entry (targets/runtime/session.py reads the same key)


@dataclass(frozen=True)
class RowTable:
    """One table the loop feeds: graph input `input` ([batch, sequence, *row], `dtype`) is, for each token id t,
    the `row_bytes` bytes at `offset` + t x `row_bytes` of `file` (beside the model), t < `rows` (else row 0)."""

    input: str
    file: str
    offset: int
    row_bytes: int
    rows: int
    dtype: str
    row: tuple[int, ...]

    @property
    def bytes(self) -> int:
        return self.rows * self.row_bytes


def row_tables(model: onnx.ModelProto) -> list[RowTable]:
    """The tables `model` takes as inputs (its ROWS_KEY metadata); none for any other model."""
    for prop in model.metadata_props:
        if prop.key == ROWS_KEY:
            return [RowTable(**{**t, "row": tuple(t["row"])}) for t in json.loads(prop.value)]
    return []


def record(model: onnx.ModelProto, tables: list[RowTable]) -> None:
    """`tables` as `model`'s ROWS_KEY metadata, in place of any before."""
    for prop in list(model.metadata_props):
        if prop.key == ROWS_KEY:
            model.metadata_props.remove(prop)
    model.metadata_props.add(key=ROWS_KEY, value=json.dumps([asdict(t) | {"row": list(t.row)} for t in tables]))


def fed_bytes(tables: dict[str, tuple[int, int]], tokens: int) -> int:
    """The rows a pass of `tokens` tokens holds as its inputs, of tables given as name -> (bytes, rows)."""
    return sum(min(rows, tokens) * (size // max(rows, 1)) for size, rows in tables.values())


# The page a mapped table's row read makes resident (4 KiB on the boards' kernels; a kernel that maps files in
# larger folios touches more, which the measured peak shows).
PAGE = 4096


# (op, input): reads the rows its indices name; GatherBlockQuantized its 4-bit data's rows and their scales' and zero
# points' (a tied decoder's embedding, its own copy of the lm_head's table: recipes/nbits.untie_embedding)
ROW_READERS = {("Gather", 0), ("GatherElements", 0), ("GatherBlockQuantized", 0), ("GatherBlockQuantized", 2),
               ("GatherBlockQuantized", 3)}


def table_files(model: onnx.ModelProto) -> dict[str, list[onnx.TensorProto]]:
    """External data files (by location) of lookup tables the runtime memory-maps and reads a row at a time:
    every tensor in the file is read by Gathers only (ROW_READERS), at an offset onnxruntime maps (the E-class
    exporter's PLE file). Such a file is never read whole: packager/row_feed.py makes its tables inputs the loop
    fills."""
    readers: dict[str, set[tuple[str, int]]] = {}
    for g in all_graphs(model.graph):
        for node in g.node:
            for index, name in enumerate(node.input):
                readers.setdefault(name, set()).add((node.op_type, index))
    files: dict[str, list[onnx.TensorProto]] = {}
    for t in model.graph.initializer:
        if t.data_location == onnx.TensorProto.EXTERNAL:
            files.setdefault({e.key: e.value for e in t.external_data}.get("location", ""), []).append(t)
    return {location: tensors for location, tensors in files.items()
            if all(readers.get(t.name, {("", 0)}) <= ROW_READERS and _offset(t) % PAGE == 0 for t in tensors)}


def table_file_bytes(model: onnx.ModelProto) -> dict[str, int]:
    """The files of the model's lookup tables (table_files', and those of the tables it takes as inputs:
    row_tables) -> the tables' bytes in each."""
    files = {location: sum(tensor_bytes(t) for t in tensors) for location, tensors in table_files(model).items()}
    for t in row_tables(model):
        files[t.file] = files.get(t.file, 0) + t.bytes
    return files


def mapped_tables(model: onnx.ModelProto) -> dict[str, tuple[int, int]]:
    """The lookup tables read a row per token, by name: (bytes, rows); table_files' and the fed ones
    (row_tables)."""
    return {**_in_graph(model), **_fed(model)}


def table_rows(model: onnx.ModelProto, tokens: int, context: int) -> int:
    """What the model's lookup tables hold resident at a pass of `tokens` tokens at `context`: the rows fed to the
    pass (row_tables: packager/row_feed.py's inputs), and the pages of the rows the context's tokens read in a
    table still memory-mapped (a bundle packaged before the rows were fed)."""
    return fed_bytes(_fed(model), tokens) + mapped_touched(_in_graph(model), context)


def _in_graph(model: onnx.ModelProto) -> dict[str, tuple[int, int]]:
    return {t.name: (tensor_bytes(t), int(t.dims[0]) if t.dims else 1)
            for tensors in table_files(model).values() for t in tensors}


def _fed(model: onnx.ModelProto) -> dict[str, tuple[int, int]]:
    return {t.input: (t.bytes, t.rows) for t in row_tables(model)}


def _offset(t: onnx.TensorProto) -> int:
    return int({e.key: e.value for e in t.external_data}.get("offset", "0"))


def mapped_touched(tables: dict[str, tuple[int, int]], tokens: int) -> int:
    """The pages of mapped tables `tokens` tokens read at most: a row each (two pages where it spans one), never
    more than the table."""
    touched = 0
    for size, rows in tables.values():
        row = size // max(rows, 1)
        touched += min(size, tokens * (-(-row // PAGE) + 1) * PAGE)
    return touched
