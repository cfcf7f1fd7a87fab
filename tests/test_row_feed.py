"""packager/row_feed.py: a decoder's lookup tables become inputs its loop fills with the rows of a pass's tokens
(run.py's RowFeeds), and the model answers as it did when it gathered them itself."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from packager.device_code import runner
from packager.estimate import mapped_tables, table_file_bytes, table_files, table_rows
from packager.estimate_activations import concrete_shapes, value_sizes
from packager.row_feed import feed_rows
from packager.row_tables import row_tables

VOCAB = 10


def _lookups(folder: Path) -> Path:
    """input_ids -> a float table's rows (Gather) times its per-row scales (GatherElements on the ids as a column,
    as the E-class exporter reads them), plus a 4-bit table's dequantized rows (GatherBlockQuantized, as a tied
    embedding's copy): every table in one file at page offsets, as estimate.table_files finds them."""
    rng = np.random.default_rng(0)
    tables = {"rows": rng.standard_normal((VOCAB, 3, 2)).astype(np.float32),
              "scales": rng.uniform(0.5, 2, (VOCAB, 1)).astype(np.float32),
              "packed": rng.integers(0, 256, (VOCAB, 1, 8)).astype(np.uint8),
              "packed_scales": rng.uniform(0.1, 1, (VOCAB, 1, 1)).astype(np.float32)}
    nodes = [
        helper.make_node("Gather", ["rows", "input_ids"], ["looked"]),
        helper.make_node("Constant", [], ["column"], value=helper.make_tensor("c", TensorProto.INT64, [2], [-1, 1])),
        helper.make_node("Reshape", ["input_ids", "column"], ["ids_column"]),
        helper.make_node("GatherElements", ["scales", "ids_column"], ["scale"]),
        helper.make_node("Constant", [], ["wide"],
                         value=helper.make_tensor("w", TensorProto.INT64, [4], [1, -1, 1, 1])),
        helper.make_node("Reshape", ["scale", "wide"], ["scale4"]),
        helper.make_node("Mul", ["looked", "scale4"], ["y"]),
        helper.make_node("GatherBlockQuantized", ["packed", "input_ids", "packed_scales"], ["z"],
                         domain="com.microsoft", gather_axis=0, quantize_axis=2, block_size=16, bits=4),
    ]
    graph = helper.make_graph(nodes, "lookups", [helper.make_tensor_value_info("input_ids", TensorProto.INT64,
                                                                               ["batch", "sequence"])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None),
                               helper.make_tensor_value_info("z", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(a, n) for n, a in tables.items()])
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
    model = helper.make_model(graph, opset_imports=opsets, ir_version=9)
    folder.mkdir(parents=True)
    with open(folder / "t.data", "wb") as f:
        for t in model.graph.initializer:
            f.write(b"\0" * (-f.tell() % 4096))
            offset = f.tell()
            f.write(t.raw_data)
            length = len(t.raw_data)
            t.ClearField("raw_data")
            t.data_location = TensorProto.EXTERNAL
            for key, value in (("location", "t.data"), ("offset", str(offset)), ("length", str(length))):
                t.external_data.add(key=key, value=value)
    onnx.save(model, folder / "model.onnx")
    return folder / "model.onnx"


def _session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def test_the_tables_become_inputs_the_loop_fills_and_the_answers_stay(tmp_path: Path) -> None:
    original = _lookups(tmp_path / "src")
    ids = np.array([[3, 0, 9, 3, 7]], dtype=np.int64)
    before = _session(original).run(None, {"input_ids": ids})
    data = (tmp_path / "src" / "t.data").read_bytes()
    tables = feed_rows(original)
    model = onnx.load(original, load_external_data=False)
    assert {t.input for t in tables} == {"rows", "scales", "packed", "packed_scales"} == \
        {t.input for t in row_tables(model)}
    assert not model.graph.initializer and not table_files(model)      # no table left in the graph ...
    assert (tmp_path / "src" / "t.data").read_bytes() == data          # ... nor a byte of the file moved
    shapes = {i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in model.graph.input}
    assert shapes["rows"] == ["batch", "sequence", 3, 2] and shapes["packed"] == ["batch", "sequence", 1, 8]
    # the estimate still sees them, read a row per token: the same tables, the same file, a pass's rows resident
    assert set(mapped_tables(model)) == {t.input for t in tables}
    assert table_file_bytes(model) == {"t.data": sum(t.bytes for t in tables)}
    assert table_rows(model, 5, 8192) == 5 * sum(t.row_bytes for t in tables)
    assert table_rows(model, 64, 8192) == VOCAB * sum(t.row_bytes for t in tables)   # never past the tables
    # the estimate's shape inference sees through the fed tables, the 4-bit one's stand-in too: [1, 5, 16] floats
    inferred = value_sizes(concrete_shapes(model, {"input_ids": (1, 5)}).graph)
    assert inferred["z"] == 1 * 5 * 16 * 4 and inferred["y"] == 1 * 5 * 3 * 2 * 4
    session = _session(original)
    feeds = runner().RowFeeds(session, tmp_path / "src")
    after = session.run(None, feeds.complete({"input_ids": ids}))
    for a, b in zip(before, after, strict=True):
        np.testing.assert_array_equal(a, b)


def test_a_model_without_tables_or_token_ids_is_left_as_it_was(tmp_path: Path) -> None:
    original = _lookups(tmp_path / "src")
    model = onnx.load(original, load_external_data=False)
    model.graph.input[0].name = "ids"
    for node in model.graph.node:
        node.input[:] = ["ids" if n == "input_ids" else n for n in node.input]
    onnx.save(model, original)
    saved = original.read_bytes()
    assert feed_rows(original) == [] and original.read_bytes() == saved
