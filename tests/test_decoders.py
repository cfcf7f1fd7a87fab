"""Decoder LLMs: export with the KV cache, int4 with a tied embedding, generation on the device's
loop, and the verify figures (token agreement, logits cosine)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from conftest import onnxruntime_profile, unpack
from packager.config import resolve_package_settings
from packager.errors import ExitCode, PackagerError
from packager.onnx_rewrite import fold_transposed_weights
from packager.pipeline import package
from packager.profiles import Int4
from packager.recipes.common import RecipeOptions, count_ops
from packager.recipes.nbits import int4
from tiny_decoders import make_decoder


def _package(folder: Path, out: Path, recipe: str, target: str = ""):
    """`folder` packaged for `target`; by default rpi5 with decoders on onnxruntime (its [decoder_runtime] left out:
    test_genai_runtime.py tests that)."""
    target = target or str(onnxruntime_profile(out.parent / "profiles"))
    settings = resolve_package_settings({"target": target, "out": str(out), "recipe": recipe, "budget": None})
    return package(str(folder), settings)


@pytest.mark.integration
@pytest.mark.parametrize("arch", ["llama", "qwen2", "gemma3", "gpt2"])
def test_architecture_exports_and_generates(arch: str, tmp_path: Path) -> None:
    """Each architecture exports with past, and the bundle's KV-cache loop reproduces the reference's
    greedy tokens exactly at fp32 (same model, same runtime: any difference is a loop bug)."""
    ctx = _package(make_decoder(tmp_path / arch, arch), tmp_path / "dist", "fp32")
    assert ctx.io.kind == "decoder" and ctx.io.kv is not None and ctx.io.kv["layers"] == 1
    acc = ctx.accuracy.to_dict()   # verify's record: its fields, then the comparison's own figures
    assert acc["metric"] == "token agreement"
    assert acc["token_agreement"] == 1.0 and acc["identical_generations"] == acc["samples"] == 6
    assert acc["min_logits_cosine"] > 0.99999
    assert ctx.context == 256  # the profile's 4096, within the model's 256 positions
    if arch == "llama":  # the bundle's own CLI generates, without packager
        bundle = unpack(ctx.archive, tmp_path / "unpacked")
        proc = subprocess.run([sys.executable, str(bundle / "run.py"), "--prompt", "The function returns",
                               "--max-new-tokens", "5", "--json"], capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
        result = json.loads(proc.stdout)
        assert result["prompt"] == "The function returns" and 1 <= len(result["tokens"]) <= 5
        manifest = json.loads((bundle / "manifest.json").read_text())
        assert manifest["runtime"]["context"] == 256 and manifest["smoke"]["min_token_agreement"] == 0.9
        smoke = subprocess.run([sys.executable, str(bundle / "smoke_test.py")], capture_output=True, text=True,
                               timeout=120)
        assert smoke.returncode == 0 and smoke.stdout.splitlines()[-1] == "PASS", smoke.stdout
        # an image for a text decoder: one sentence, exit 2, not a traceback
        (tmp_path / "photo.png").write_bytes(b"\x89PNG\r\n\x1a\n")
        refused = subprocess.run([sys.executable, str(bundle / "run.py"), "--image", str(tmp_path / "photo.png"),
                                  "--prompt", "a"], capture_output=True, text=True, timeout=120)
        assert refused.returncode == 2 and "reads no images or audio" in refused.stderr, refused.stderr


def _tied_model(vocab: int = 64, hidden: int = 64) -> onnx.ModelProto:
    """ids -> Gather(table) -> MatMul(table.T): an embedding and an lm_head sharing one weight, written
    twice as the exporter writes them."""
    rng = np.random.default_rng(0)
    table = rng.standard_normal((vocab, hidden)).astype(np.float32)
    nodes = [helper.make_node("Gather", ["table", "ids"], ["h"], name="/model/embed_tokens/Gather"),
             helper.make_node("MatMul", ["h", "head"], ["logits"], name="/lm_head/MatMul")]
    graph = helper.make_graph(nodes, "tied", [helper.make_tensor_value_info("ids", TensorProto.INT64, [1, None])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, None, vocab])],
                              [numpy_helper.from_array(table, "table"),
                               numpy_helper.from_array(np.ascontiguousarray(table.T), "head")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def test_int4_quantizes_a_tied_embedding_once_and_maps_the_lookups_copy(tmp_path: Path) -> None:
    """A tied pair is quantized once (the lm_head's MatMulNBits weight); the embedding's GatherBlockQuantized reads its
    own copy of those 4-bit data and scales from a file of its own at mapped offsets, which the estimate counts as a
    mapped table (the rows a context reads), so that the lm_head's original is the MatMulNBits' alone to free."""
    from packager.estimate import mapped_tables
    from packager.recipes.common import MAP_ALIGN

    src, dst = tmp_path / "tied.onnx", tmp_path / "int4.onnx"
    onnx.save(_tied_model(), src)
    result = int4(src, dst, RecipeOptions(int4=Int4(block_size=32, symmetric=True, accuracy_level=0)))
    assert result.params["embedding"].startswith("int4, tied")
    graph = onnx.load(dst, load_external_data=False).graph
    gbq = next(n for n in graph.node if n.op_type == "GatherBlockQuantized")
    mnb = next(n for n in graph.node if n.op_type == "MatMulNBits")
    assert gbq.input[0] != mnb.input[1]
    stored = {t.name: {e.key: e.value for e in t.external_data} for t in graph.initializer}
    assert {stored[gbq.input[0]]["location"], stored[gbq.input[2]]["location"]} == {"int4.embedding.data"}
    assert all(int(stored[n]["offset"]) % MAP_ALIGN == 0 for n in (gbq.input[0], gbq.input[2]))
    assert not stored[mnb.input[1]]   # the lm_head's weight stays in the model
    assert set(mapped_tables(onnx.load(dst, load_external_data=False))) == {gbq.input[0], gbq.input[2]}
    model = onnx.load(dst)
    weights = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    assert np.array_equal(weights[gbq.input[0]], weights[mnb.input[1]])   # one quantization, stored twice
    assert not any(i.data_type == TensorProto.FLOAT and i.dims == [64, 64] for i in model.graph.initializer)
    ids = np.array([[3, 17, 42]], dtype=np.int64)
    ref = ort.InferenceSession(src.read_bytes()).run(None, {"ids": ids})[0]
    got = ort.InferenceSession(str(dst)).run(None, {"ids": ids})[0]
    cos = np.sum(ref * got, -1) / np.linalg.norm(ref, axis=-1) / np.linalg.norm(got, axis=-1)
    assert cos.min() > 0.95
    assert count_ops(model, {"GatherBlockQuantized", "MatMulNBits"}) == 2
    # 4096 weights at 4 bits (2 KiB) plus fp32 scales per block of 32, in the model; far below fp32's 16 KiB
    assert dst.stat().st_size < 4 * 1024


def test_a_tied_float_embeddings_lookup_table_is_mapped_from_a_file_of_its_own(tmp_path: Path) -> None:
    """fp32 (and fp16) keep the exporter's two copies of a tied table; the quantize stage moves the Gather's into a
    file of its own, which the estimate maps (the rows a context reads), the lm_head's staying in the model."""
    import shutil

    from packager.estimate import mapped_tables
    from packager.stages.quantize import keep_tables_mapped

    (tmp_path / "ref").mkdir()
    (tmp_path / "pkg").mkdir()
    src, dst = tmp_path / "ref" / "model.onnx", tmp_path / "pkg" / "model.onnx"
    onnx.save(_tied_model(), src)
    shutil.copyfile(src, dst)   # the fp32 recipe
    keep_tables_mapped(src, dst)
    graph = onnx.load(dst, load_external_data=False).graph
    where = {t.name: {e.key: e.value for e in t.external_data}.get("location") for t in graph.initializer}
    assert where == {"table": "model.embedding.data", "head": None}
    assert set(mapped_tables(onnx.load(dst, load_external_data=False))) == {"table"}
    ids = np.array([[3, 17, 42]], dtype=np.int64)
    ref = ort.InferenceSession(str(src)).run(None, {"ids": ids})[0]
    assert np.array_equal(ort.InferenceSession(str(dst)).run(None, {"ids": ids})[0], ref)


def test_int4_untied_embedding_gets_its_own_table(tmp_path: Path) -> None:
    model = _tied_model()
    head = next(i for i in model.graph.initializer if i.name == "head")
    head.CopyFrom(numpy_helper.from_array(-numpy_helper.to_array(head), "head"))
    onnx.save(model, tmp_path / "untied.onnx")
    result = int4(tmp_path / "untied.onnx", tmp_path / "int4.onnx", RecipeOptions())
    assert result.params["embedding"].startswith("int4 (GatherBlockQuantized, its own")


def test_context_longer_than_the_model_is_refused() -> None:
    from types import SimpleNamespace

    from packager.profiles import resolve_target
    from packager.stages.export import decoder_context

    profile = resolve_target("rpi5")
    ctx = SimpleNamespace(io=SimpleNamespace(max_length=256), context=None, profile=profile)
    assert decoder_context(ctx) == 256
    ctx.context = 128
    assert decoder_context(ctx) == 128
    ctx.context = 100_000
    with pytest.raises(PackagerError, match="longer than the model's 256 positions") as e:
        decoder_context(ctx)
    assert e.value.code == ExitCode.USAGE


def test_int4_ties_an_lm_head_exported_as_a_transpose(tmp_path: Path) -> None:
    """At opset 20 the exporter writes the tied lm_head as Transpose(embedding table)."""
    model = _tied_model()
    graph = model.graph
    head = next(i for i in graph.initializer if i.name == "head")
    graph.initializer.remove(head)
    graph.node.insert(1, helper.make_node("Transpose", ["table"], ["head"], perm=[1, 0]))
    onnx.save(model, tmp_path / "transposed.onnx")
    fold_transposed_weights(tmp_path / "transposed.onnx")   # what the export stage does to every reference
    result = int4(tmp_path / "transposed.onnx", tmp_path / "int4.onnx", RecipeOptions())
    assert result.params["embedding"].startswith("int4, tied")
    quantized = onnx.load(tmp_path / "int4.onnx")
    assert count_ops(quantized, {"Transpose"}) == 0 and count_ops(quantized, {"MatMulNBits"}) == 1


@pytest.mark.integration
def test_the_exports_lm_head_reads_the_last_position_and_a_chunked_prefill_keeps_the_tokens(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The export slices the lm_head's input to the last position (onnx_rewrite.last_position_logits): a pass of
    several tokens returns [1, 1, vocab] and its io says "last"; run.py's Decoder then prefills the prompt in chunks
    and generates the greedy tokens, and the first prediction's logits, of one pass of the graph as optimum made it."""
    import shutil
    from types import SimpleNamespace

    from packager.device_code import runner
    from packager.export_process import export_here
    from packager.families import describe_io
    from packager.families.base import Export
    from packager.onnx_rewrite import last_position_logits, name_tied_lm_head
    from packager.stages.export import DEFAULT_OPSET
    from packager.stages.source import DECODER_TASK

    folder, full, last = make_decoder(tmp_path / "llama", "llama"), tmp_path / "full", tmp_path / "last"
    job = {"folder": str(folder), "out": str(full), "task": DECODER_TASK, "opset": DEFAULT_OPSET,
           "constant_folding": True, "post_process": False}
    assert export_here(SimpleNamespace(progress=lambda _: None), job) == {}
    fold_transposed_weights(full / "model.onnx")   # the export stage's rewrites, in its order
    name_tied_lm_head(full / "model.onnx")
    shutil.copytree(full, last)
    assert last_position_logits(last / "model.onnx")
    ios = {name: describe_io(Export(folder, DECODER_TASK, path)) for name, path in (("full", full), ("last", last))}
    assert "logits" not in ios["full"] and ios["last"]["logits"] == "last"

    rt = runner()
    sessions = {name: ort.InferenceSession(str(path / "model.onnx"), providers=["CPUExecutionProvider"])
                for name, path in (("full", full), ("last", last))}
    decoders = {name: rt.Decoder(sessions[name], ios[name]) for name in sessions}
    prompt = [int(t) for t in np.random.default_rng(0).integers(2, 512, 70)]
    feeds = decoders["last"].feeds(prompt, decoders["last"].empty_past(), 0)
    assert sessions["last"].run(["logits"], feeds)[0].shape == (1, 1, 512)
    assert sessions["full"].run(["logits"], feeds)[0].shape == (1, 70, 512)
    # chunks of 16: a 70-token prompt in 5 passes, the last one short
    monkeypatch.setattr(decoders["last"], "prefill_chunk", 16)
    passes = []
    monkeypatch.setattr(decoders["last"], "step", lambda ids, *a: passes.append(len(ids)) or rt.Decoder.step(
        decoders["last"], ids, *a))
    tokens, first = decoders["last"].generate(prompt, 12)
    assert passes[:5] == [16, 16, 16, 16, 6] and set(passes[5:]) == {1}
    expected, expected_first = decoders["full"].generate(prompt, 12)
    assert tokens == expected and len(tokens) == 12
    np.testing.assert_allclose(first, expected_first, rtol=1e-4, atol=1e-4)
    # verify's teacher-forced predictions (compare_decoder, int4-mixed's divergence): the prompt in chunks, then a
    # pass a token, as one pass of the unsliced graph scores them
    ids = prompt + expected
    np.testing.assert_allclose(rt.score_from(decoders["last"], ids, len(prompt)),
                               decoders["full"].score(ids)[len(prompt) - 1:], rtol=1e-4, atol=1e-4)
