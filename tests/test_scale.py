"""Scale (issue 9): the pieces that keep a 1B model's export and int4 quantization within twice its
fp32 weights, on tiny models, in-process: streaming int4 from external data gives the same bytes as
before, the external-data merge and fold work a tensor at a time, and progress shows the elapsed
time and each weight. scripts/bench_scale.py measures the real thing."""

from __future__ import annotations

import io
import re
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from rich.console import Console

from packager.onnx_rewrite import fold_transposed_weights, merge_external_data, name_tied_lm_head
from packager.profiles import Int4
from packager.progress import Reporter
from packager.recipes.common import RecipeOptions
from packager.recipes.nbits import int4

INT4 = Int4(block_size=32, symmetric=True, accuracy_level=4)


def _decoder_like(vocab: int = 96, hidden: int = 64, layers: int = 3, head: str = "head") -> onnx.ModelProto:
    """ids -> Gather(table) -> MatMuls -> MatMul(table.T): a tied embedding and lm_head around a few
    layers, the shapes of the exporter's output."""
    rng = np.random.default_rng(0)
    table = rng.standard_normal((vocab, hidden)).astype(np.float32)
    inits = [numpy_helper.from_array(table, "table"), numpy_helper.from_array(np.ascontiguousarray(table.T), head)]
    nodes = [helper.make_node("Gather", ["table", "ids"], ["h0"], name="/model/embed_tokens/Gather")]
    for i in range(layers):
        inits.append(numpy_helper.from_array(rng.standard_normal((hidden, hidden)).astype(np.float32) * 0.1, f"w{i}"))
        nodes.append(helper.make_node("MatMul", [f"h{i}", f"w{i}"], [f"h{i + 1}"], name=f"/model/layers.{i}/MatMul"))
    inits.append(numpy_helper.from_array(np.ones(hidden, np.float32), "norm"))
    # a Constant node's tensor: the exporter's merge moves these to external data too
    nodes.append(helper.make_node("Constant", [], ["bias"], name="/model/norm/Constant",
                                  value=numpy_helper.from_array(np.full(hidden, 0.5, np.float32))))
    nodes.append(helper.make_node("Mul", [f"h{layers}", "norm"], ["m"], name="/model/norm/Mul"))
    nodes.append(helper.make_node("Add", ["m", "bias"], ["n"], name="/model/norm/Add"))
    nodes.append(helper.make_node("MatMul", ["n", head], ["logits"], name="/lm_head/MatMul"))
    graph = helper.make_graph(nodes, "decoder", [helper.make_tensor_value_info("ids", TensorProto.INT64, [1, None])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, None, vocab])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def test_int4_from_external_data_is_the_inline_int4(tmp_path: Path) -> None:
    """The streaming int4 (weights memory-mapped from external data, one at a time) writes the same
    model as the int4 of the same model held inline, and says which weight it has done. (Inline
    sources, sample:tiny-llama's, give the same bytes as before the streaming: checked by hand.)"""
    model = _decoder_like()
    (tmp_path / "inline").mkdir()
    (tmp_path / "ext").mkdir()
    onnx.save(model, tmp_path / "inline" / "model.onnx")
    onnx.save(model, tmp_path / "ext" / "model.onnx", save_as_external_data=True, location="model.onnx_data",
              size_threshold=0, convert_attribute=True)
    lines: list[str] = []
    a = int4(tmp_path / "inline" / "model.onnx", tmp_path / "a.onnx", RecipeOptions(int4=INT4))
    b = int4(tmp_path / "ext" / "model.onnx", tmp_path / "b.onnx", RecipeOptions(int4=INT4, progress=lines.append))
    assert a == b and a.params["embedding"].startswith("int4, tied")
    inline, streamed = onnx.load(tmp_path / "a.onnx"), onnx.load(tmp_path / "b.onnx")
    constants = [a.t for n in streamed.graph.node for a in n.attribute if a.type == onnx.AttributeProto.TENSOR]
    assert constants
    for t in list(streamed.graph.initializer) + constants:   # read from external data: DEFAULT, set
        assert t.data_location == TensorProto.DEFAULT and not t.external_data
        t.ClearField("data_location")
    for t in inline.graph.initializer:   # the embedding's copy, read from its mapped file in both
        t.ClearField("data_location")
    assert streamed == inline
    # 3 layers and the lm_head; the embedding reads a copy of the lm_head's 4-bit weight
    assert lines[0] == "1/4 weights at 4 bits (/model/layers.0/MatMul)"
    assert lines[-1] == "4/4 weights at 4 bits (/lm_head/MatMul)"
    # the source's external data stays where it was: relative locations, nothing rewritten
    src = onnx.load(tmp_path / "ext" / "model.onnx", load_external_data=False)
    assert {e.value for t in src.graph.initializer for e in t.external_data if e.key == "location"} == \
        {"model.onnx_data"}


def test_merge_external_data_one_tensor_at_a_time(tmp_path: Path) -> None:
    """torch.onnx writes one file per tensor; the merge into one data file keeps every value."""
    model = _decoder_like(vocab=64, hidden=512, layers=2)   # 1 MiB weights: page-aligned in the merged file
    values = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    onnx.save(model, tmp_path / "model.onnx", save_as_external_data=True, all_tensors_to_one_file=False,
              size_threshold=1024)
    parts = onnx.load(tmp_path / "model.onnx", load_external_data=False)
    merge_external_data(parts, tmp_path / "model.onnx", "model.onnx_data", size_threshold=100)
    merged = onnx.load(tmp_path / "model.onnx", load_external_data=False)
    infos = [{e.key: e.value for e in t.external_data} for t in merged.graph.initializer]
    assert {i["location"] for i in infos} == {"model.onnx_data"}
    assert all(int(i["offset"]) % 4096 == 0 for i in infos if int(i["length"]) >= 2**20)
    loaded = onnx.load(tmp_path / "model.onnx")
    assert [i.name for i in loaded.graph.initializer] == list(values)
    for t in loaded.graph.initializer:
        np.testing.assert_array_equal(numpy_helper.to_array(t), values[t.name])


def test_fold_with_external_data_appends_the_transposed_table(tmp_path: Path) -> None:
    """The large export's Linear weights come as MatMul(x, Transpose(W)) (torch's constant folding off):
    each is folded from the data file, and W, read by nothing else, leaves the graph."""
    model = _decoder_like()
    graph = model.graph
    graph.initializer.remove(next(i for i in graph.initializer if i.name == "head"))
    graph.node.insert(1, helper.make_node("Transpose", ["table"], ["head"], perm=[1, 0]))
    w0 = next(i for i in graph.initializer if i.name == "w0")
    w0.CopyFrom(numpy_helper.from_array(np.ascontiguousarray(numpy_helper.to_array(w0).T), "w0_linear"))
    graph.node.insert(1, helper.make_node("Transpose", ["w0_linear"], ["w0"], perm=[1, 0]))
    reference = onnx.ModelProto()
    reference.CopyFrom(model)
    onnx.save(model, tmp_path / "inline.onnx")
    onnx.save(model, tmp_path / "ext.onnx", save_as_external_data=True, location="ext.onnx_data", size_threshold=0)
    fold_transposed_weights(tmp_path / "inline.onnx")
    lines: list[str] = []
    fold_transposed_weights(tmp_path / "ext.onnx", lines.append)
    assert lines[-1] == "folded 2/2 transposed weights"
    inline, ext = onnx.load(tmp_path / "inline.onnx"), onnx.load(tmp_path / "ext.onnx")
    assert [n.op_type for n in inline.graph.node] == [n.op_type for n in ext.graph.node]
    assert "Transpose" not in {n.op_type for n in ext.graph.node}
    names = {i.name for i in ext.graph.initializer}
    assert "w0" in names and "w0_linear" not in names and "table" in names   # the Gather still reads table
    values = {i.name: numpy_helper.to_array(i) for i in inline.graph.initializer}
    assert set(values) == names
    for t in ext.graph.initializer:
        np.testing.assert_array_equal(numpy_helper.to_array(t), values[t.name])
    import onnxruntime as ort

    ids = np.array([[1, 5, 7]], dtype=np.int64)
    want = ort.InferenceSession(reference.SerializeToString()).run(None, {"ids": ids})[0]
    got = ort.InferenceSession(str(tmp_path / "ext.onnx")).run(None, {"ids": ids})[0]
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


def test_tied_lm_head_named_as_the_deduplication_named_it(tmp_path: Path) -> None:
    """Exported with no_post_process, a tied lm_head is its own initializer: it takes the name and the
    place optimum's deduplication and the fold gave it, and nothing else changes."""
    onnx.save(_decoder_like(head="onnx::MatMul_7"), tmp_path / "model.onnx", save_as_external_data=True,
              location="model.onnx_data", size_threshold=0)
    before = (tmp_path / "model.onnx_data").read_bytes()
    name_tied_lm_head(tmp_path / "model.onnx")
    model = onnx.load(tmp_path / "model.onnx", load_external_data=False)
    assert model.graph.initializer[-1].name == "table_transposed"
    assert "onnx::MatMul_7" not in {i.name for i in model.graph.initializer}
    assert next(n for n in model.graph.node if n.name == "/lm_head/MatMul").input[1] == "table_transposed"
    assert (tmp_path / "model.onnx_data").read_bytes() == before
    untied = _decoder_like(head="onnx::MatMul_7")
    untied.graph.initializer[1].CopyFrom(numpy_helper.from_array(np.zeros((64, 96), np.float32), "onnx::MatMul_7"))
    onnx.save(untied, tmp_path / "untied.onnx")
    name_tied_lm_head(tmp_path / "untied.onnx")
    assert onnx.load(tmp_path / "untied.onnx") == untied


def _reporter() -> tuple[Reporter, io.StringIO]:
    buffer = io.StringIO()
    reporter = Reporter(console=Console(file=buffer, force_terminal=False, width=200, highlight=False))
    return reporter, buffer


def test_progress_lines_show_elapsed_time_and_each_step() -> None:
    """Off a terminal (a CI log), a minutes-long stage prints its progress with the elapsed time."""
    reporter, buffer = _reporter()
    reporter.every_s = 0.0
    timings: dict[str, float] = {}
    with reporter.stage("quantize", timings) as step:
        for i in range(1, 4):
            step.update(f"{i}/3 weights (/model/layers.{i}/MatMul)")
    lines = buffer.getvalue().splitlines()
    assert [line.split(": ", 1)[1] for line in lines[:3]] == [f"{i}/3 weights (/model/layers.{i}/MatMul)"
                                                             for i in range(1, 4)]
    assert all(re.match(r"  quantize +\d+s: \d/3 weights", line) for line in lines[:3]), lines
    assert lines[-1].startswith("✓ quantize") and "quantize" in timings


def test_progress_is_throttled_and_has_a_heartbeat() -> None:
    reporter, buffer = _reporter()
    reporter.heartbeat_s = 0.0   # a line each second the stage says nothing
    with reporter.stage("export", {}) as step:
        step.update("loading the weights")   # within every_s of the start: not printed at once
        time.sleep(1.3)
    lines = buffer.getvalue().splitlines()
    assert re.match(r"  export +1s: loading the weights$", lines[0]), lines
    assert lines[-1].startswith("✓ export")


def test_quiet_reporter_prints_nothing() -> None:
    buffer = io.StringIO()
    reporter = Reporter(quiet=True, console=Console(file=buffer))
    reporter.every_s = reporter.heartbeat_s = 0.0
    with reporter.stage("export", {}) as step:
        step.update("tracing layer 1/16")
    assert buffer.getvalue() == ""


def test_int4_over_the_protobuf_limit_writes_model_onnx_data(tmp_path: Path, monkeypatch) -> None:
    """A source over 2 GiB gives an output with external data, in a file of a fixed name (not onnx's
    uuid default, which would change every bundle)."""
    from packager.recipes import common

    (tmp_path / "ext").mkdir()
    onnx.save(_decoder_like(), tmp_path / "ext" / "model.onnx", save_as_external_data=True,
              location="model.onnx_data", size_threshold=0)
    monkeypatch.setattr(common, "PROTO_LIMIT", 1024)   # this tiny model stands for one over 2 GiB
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "model.onnx.data").write_bytes(b"stale")   # a data file already there is replaced
    int4(tmp_path / "ext" / "model.onnx", tmp_path / "out" / "model.onnx", RecipeOptions(int4=INT4))
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["model.embedding.data", "model.onnx",
                                                                    "model.onnx.data"]   # the tied lookup's copy
    quantized = onnx.load(tmp_path / "out" / "model.onnx")
    assert {n.op_type for n in quantized.graph.node} >= {"MatMulNBits", "GatherBlockQuantized"}


@pytest.mark.integration
def test_a_large_model_exports_in_a_child_process_and_says_which_layer(tmp_path: Path, monkeypatch) -> None:
    """Over CHILD_EXPORT_BYTES the export runs in a fresh interpreter that reports each traced layer on a pipe;
    the result is the in-process export's graph."""
    import packager
    from conftest import onnxruntime_profile
    from packager.stages import export
    from tiny_decoders import make_decoder

    folder = make_decoder(tmp_path / "llama", "llama", num_hidden_layers=2)
    rpi5 = str(onnxruntime_profile(tmp_path / "profiles"))   # decoders on onnxruntime: the export is what is checked
    here = packager.check(folder, rpi5, recipe="fp32", measure=False, cache=False)
    monkeypatch.setattr(export, "CHILD_EXPORT_BYTES", 0)    # every model counts as large
    reporter, buffer = _reporter()
    reporter.every_s = 0.0
    child = packager.check(folder, rpi5, recipe="fp32", measure=False, cache=False, progress=reporter)
    lines = buffer.getvalue().splitlines()
    assert any(line.endswith("tracing layer 2/2") for line in lines), lines
    assert child.estimate == here.estimate     # the same graph, weights and all, either way
